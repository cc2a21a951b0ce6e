//! Host-held secrets: values a grant's headers are built from, which no guest ever holds.
//!
//! ```toml
//! [secrets]
//! PAYMENTS_TOKEN = { env = "PAYMENTS_TOKEN" }
//! CARRIER_KEY = { file = "/run/secrets/carrier" }
//! ```
//!
//! Every secret is read once, at load; a missing one is an error naming it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

/// Where one secret's value comes from: exactly one of `env` and `file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// An environment variable of the host.
    #[serde(default)]
    pub env: Option<String>,
    /// A file whose content (without a trailing newline) is the value; relative to the config
    /// file.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl SecretSource {
    /// Resolves a relative `file` against `base`.
    pub fn resolve(&mut self, base: &Path) {
        if let Some(file) = &mut self.file {
            *file = base.join(&*file);
        }
    }

    fn read(&self, name: &str) -> Result<String, String> {
        let value = match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var)
                .map_err(|_| format!("secret {name}: environment variable {var} is not set"))?,
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| format!("secret {name}: cannot read {}: {e}", file.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            _ => {
                return Err(format!(
                    "secret {name}: give exactly one of `env` and `file`"
                ));
            }
        };
        if value.is_empty() {
            return Err(format!("secret {name}: its value is empty"));
        }
        Ok(value)
    }
}

/// The secrets of a deployment, read. Their values never appear in `Debug` output.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, Arc<str>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    /// Reads every secret of `sources`; the error names the first that cannot be read.
    pub fn read(sources: &BTreeMap<String, SecretSource>) -> Result<Self, String> {
        let values = sources
            .iter()
            .map(|(name, source)| Ok((name.clone(), Arc::from(source.read(name)?))))
            .collect::<Result<_, String>>()?;
        Ok(Self { values })
    }

    /// `template` with each `{{ secrets.NAME }}` replaced by that secret's value; answers the
    /// text and the secrets it used. The error names a secret that does not exist.
    pub(crate) fn render(&self, template: &str) -> Result<(String, Vec<Arc<str>>), String> {
        let mut text = String::new();
        let mut used = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            text.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("`{template}`: `{{{{` is never closed"))?;
            let reference = after[..end].trim();
            let name = reference.strip_prefix("secrets.").ok_or_else(|| {
                format!(
                    "`{template}`: only `{{{{ secrets.NAME }}}}` can be used, not `{reference}`"
                )
            })?;
            let value = self.values.get(name).ok_or_else(|| {
                format!("`{template}` uses secret {name}, which [secrets] does not define")
            })?;
            text.push_str(value);
            used.push(Arc::clone(value));
            rest = &after[end + 2..];
        }
        text.push_str(rest);
        Ok((text, used))
    }
}
