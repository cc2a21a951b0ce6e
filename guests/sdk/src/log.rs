//! Log lines from a handler or worker, kept with its operation and attempt beside what it
//! writes to stdout and stderr (which the host keeps too, line by line).
//!
//! ```no_run
//! use opshost_guest::log;
//!
//! let order = "ord_1";
//! log::info!("charging {order}"; order = order, amount_cents = 4200);
//! log::warn!("the carrier is slow");
//! ```
//!
//! Lines beyond the run's rate (`[limits] log_lines_per_second`, `log_bytes_per_second`) are
//! dropped by the host, which writes how many it dropped.

pub use crate::bindings::opshost::operation::log::Level;
pub use crate::{debug, error, info, trace, warn};

/// Writes one line at `level` with key-value `fields`.
pub fn write(level: Level, message: &str, fields: &[(String, String)]) {
    crate::bindings::opshost::operation::log::write(level, message, fields);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __opshost_log {
    ($level:expr, $fmt:literal $(, $arg:expr)* $(,)? $(; $($key:ident = $value:expr),+ $(,)?)?) => {
        $crate::log::write(
            $level,
            &::std::format!($fmt $(, $arg)*),
            &[$($((
                ::std::string::String::from(::std::stringify!($key)),
                ::std::string::ToString::to_string(&$value),
            )),+)?],
        )
    };
}

/// Writes a line at level `trace`: `trace!("text {}", x; key = value)`.
#[macro_export]
macro_rules! trace {
    ($($line:tt)+) => { $crate::__opshost_log!($crate::log::Level::Trace, $($line)+) };
}

/// Writes a line at level `debug`: `debug!("text {}", x; key = value)`.
#[macro_export]
macro_rules! debug {
    ($($line:tt)+) => { $crate::__opshost_log!($crate::log::Level::Debug, $($line)+) };
}

/// Writes a line at level `info`: `info!("text {}", x; key = value)`.
#[macro_export]
macro_rules! info {
    ($($line:tt)+) => { $crate::__opshost_log!($crate::log::Level::Info, $($line)+) };
}

/// Writes a line at level `warn`: `warn!("text {}", x; key = value)`.
#[macro_export]
macro_rules! warn {
    ($($line:tt)+) => { $crate::__opshost_log!($crate::log::Level::Warn, $($line)+) };
}

/// Writes a line at level `error`: `error!("text {}", x; key = value)`.
#[macro_export]
macro_rules! error {
    ($($line:tt)+) => { $crate::__opshost_log!($crate::log::Level::Error, $($line)+) };
}
