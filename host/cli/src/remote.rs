//! The caller commands (start, get, wait, watch, cancel, signal, list) and the operator's
//! `jobs`, `deploy`, `rollback` and `deployments` commands over the HTTP client.
//!
//! Snapshots go to stdout as JSON (a watched operation's output alone), everything meant for a
//! person to stderr, so `opshost start ... | jq .id` works.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Result, bail};
use futures::StreamExt;
use opshost_api::{DeployTarget, EventKind, LogLine, OperationState, Snapshot};
use opshost_client::{
    Client, ClientError, ClientOptions, JobQuery, JobState, ListQuery, StartOptions,
};
use serde_json::Value;

use crate::exit;
use crate::progress::ProgressView;

/// A connection to a host for one command.
pub struct Remote {
    client: Client,
}

/// The exit code of a command that failed with `error`.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::Api { .. }) => exit::REFUSED,
        Some(ClientError::Transport(_)) => exit::UNREACHABLE,
        _ => exit::USAGE,
    }
}

impl Remote {
    pub fn new(connection: &crate::Connection) -> Result<Self> {
        let options = ClientOptions {
            ca_file: connection.ca_file.clone(),
        };
        Ok(Self {
            client: Client::with_options(&connection.url, &connection.token, &options)?,
        })
    }

    pub async fn start(
        &self,
        operation: &str,
        input: &Value,
        id: Option<String>,
        wait: Option<u64>,
        watch: bool,
    ) -> Result<u8> {
        let options = StartOptions {
            idempotency_key: id,
            wait: wait.map(Duration::from_secs),
        };
        let snapshot = self.client.start(operation, input, &options).await?;
        if watch {
            eprintln!("started {} as {}", snapshot.operation, snapshot.id);
            return self.watch(&snapshot.id).await;
        }
        print_json(&snapshot)?;
        Ok(exit::OK)
    }

    pub async fn get(&self, id: &str) -> Result<u8> {
        print_json(&self.client.get(id).await?)?;
        Ok(exit::OK)
    }

    /// Prints operation `id`'s log lines, as text or (`json`) as the API's JSON lines. A
    /// reader that stops reading (`| head`) ends it quietly.
    pub async fn logs(&self, id: &str, follow: bool, json: bool) -> Result<u8> {
        let print = |line: &LogLine| -> std::io::Result<()> {
            let text = if json {
                serde_json::to_string(line)?
            } else {
                log_line(line)
            };
            writeln!(std::io::stdout().lock(), "{text}")
        };
        let closed = |error: &std::io::Error| error.kind() == std::io::ErrorKind::BrokenPipe;
        if follow {
            let mut lines = self.client.follow_logs(id, 0).await?;
            while let Some(line) = lines.next().await {
                match print(&line?) {
                    Err(error) if closed(&error) => return Ok(exit::OK),
                    written => written?,
                }
            }
            return Ok(exit::OK);
        }
        let mut after = 0;
        loop {
            let lines = self.client.logs(id, after, LOG_PAGE).await?;
            for line in &lines {
                match print(line) {
                    Err(error) if closed(&error) => return Ok(exit::OK),
                    written => written?,
                }
            }
            // The host may answer fewer lines than asked (it cuts answers by size): only an
            // empty page is the end.
            match lines.last() {
                Some(last) => after = last.seq,
                None => return Ok(exit::OK),
            }
        }
    }

    pub async fn wait(&self, id: &str, timeout: Option<u64>) -> Result<u8> {
        let snapshot = match timeout {
            Some(seconds) => {
                self.client
                    .wait_timeout(id, Duration::from_secs(seconds))
                    .await?
            }
            None => self.client.wait(id).await?,
        };
        print_json(&snapshot)?;
        Ok(if snapshot.state == OperationState::Completed {
            exit::OK
        } else {
            exit::NOT_COMPLETED
        })
    }

    pub async fn watch(&self, id: &str) -> Result<u8> {
        let view = ProgressView::new()?;
        let mut events = self.client.watch(id, None);
        let mut last = None;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    view.finish();
                    return Err(error.into());
                }
            };
            if event.kind() == EventKind::Progress {
                view.update(event.snapshot());
            }
            last = Some(event.into_snapshot());
        }
        view.finish();
        match last {
            Some(snapshot) if snapshot.is_terminal() => report(&snapshot),
            _ => bail!("the event stream of `{id}` ended before the operation did"),
        }
    }

    pub async fn cancel(&self, id: &str) -> Result<u8> {
        print_json(&self.client.cancel(id).await?)?;
        Ok(exit::OK)
    }

    pub async fn signal(&self, id: &str, name: &str, payload: &Value) -> Result<u8> {
        let sequence = self.client.signal(id, name, payload).await?;
        println!("{sequence}");
        Ok(exit::OK)
    }

    pub async fn jobs(
        &self,
        queue: Option<String>,
        state: Option<String>,
        after: Option<String>,
        limit: Option<usize>,
    ) -> Result<u8> {
        let state = match state {
            Some(name) => Some(JobState::from_name(&name).ok_or_else(|| {
                anyhow::anyhow!(
                    "--state `{name}` is not one of queued, running, completed, dead, cancelled"
                )
            })?),
            None => None,
        };
        let query = JobQuery {
            queue,
            state,
            after,
            limit,
        };
        let page = self.client.jobs(&query).await?;
        for job in &page.items {
            println!(
                "{}\t{}\t{}\t{}/{}\t{}",
                job.id,
                job.queue,
                job.state.as_str(),
                job.attempt,
                job.max_attempts,
                job.operation.as_deref().unwrap_or("-")
            );
        }
        if let Some(next) = page.next {
            eprintln!("more: --after {next}");
        }
        Ok(exit::OK)
    }

    pub async fn job(&self, id: &str) -> Result<u8> {
        print_json(&self.client.job(id).await?)?;
        Ok(exit::OK)
    }

    pub async fn retry_job(&self, id: &str) -> Result<u8> {
        print_json(&self.client.retry_job(id).await?)?;
        Ok(exit::OK)
    }

    pub async fn cancel_job(&self, id: &str) -> Result<u8> {
        print_json(&self.client.cancel_job(id).await?)?;
        Ok(exit::OK)
    }

    pub async fn deploy(
        &self,
        target: &DeployTarget,
        component: Vec<u8>,
        percent: Option<u8>,
    ) -> Result<u8> {
        let deployed = self.client.deploy(target, component, percent).await?;
        let sha256 = deployed["sha256"].as_str().unwrap_or_default();
        match percent {
            Some(percent) if percent < 100 => {
                eprintln!("{target}: version {sha256} ramped to {percent}% of new work");
            }
            _ => eprintln!("{target}: version {sha256} is current"),
        }
        print_json(&deployed)?;
        Ok(exit::OK)
    }

    /// Prints the host's report; exits 1 when it found a problem.
    pub async fn check_deploy(&self, target: &DeployTarget, component: Vec<u8>) -> Result<u8> {
        let report = self.client.check_deploy(target, component).await?;
        let problems = report["problems"].as_array().cloned().unwrap_or_default();
        for problem in &problems {
            eprintln!("problem: {}", problem.as_str().unwrap_or_default());
        }
        for (key, what) in [
            ("importsAdded", "imports"),
            ("importsRemoved", "no longer imports"),
        ] {
            for import in report[key].as_array().into_iter().flatten() {
                eprintln!(
                    "{what} {} (against the current version)",
                    import.as_str().unwrap_or_default()
                );
            }
        }
        print_json(&report)?;
        Ok(if problems.is_empty() {
            exit::OK
        } else {
            exit::NOT_COMPLETED
        })
    }

    pub async fn rollback(&self, target: &DeployTarget) -> Result<u8> {
        let rolled = self.client.rollback(target).await?;
        let sha256 = rolled["sha256"].as_str().unwrap_or_default();
        eprintln!("{target}: rolled back; version {sha256} is current");
        print_json(&rolled)?;
        Ok(exit::OK)
    }

    /// Prints each version, tab-separated: kind, name, sha256, state, in flight on this host,
    /// deployed at, deployed by. With `history`, each change of the log instead: seq, at,
    /// kind, name, action, sha256, by.
    pub async fn deployments(&self, history: bool) -> Result<u8> {
        let listed = self.client.deployments().await?;
        if history {
            for change in listed["history"].as_array().into_iter().flatten() {
                let text = |key: &str| change[key].as_str().unwrap_or_default().to_owned();
                let action = match change["percent"].as_u64() {
                    Some(percent) if percent < 100 => format!("ramp {percent}%"),
                    _ => text("action"),
                };
                println!(
                    "{}\t{}\t{}\t{}\t{action}\t{}\t{}",
                    change["seq"],
                    text("at"),
                    change["target"]["kind"].as_str().unwrap_or_default(),
                    change["target"]["name"].as_str().unwrap_or_default(),
                    text("sha256"),
                    text("by"),
                );
            }
            return Ok(exit::OK);
        }
        for kind in ["operations", "queues"] {
            let Some(targets) = listed[kind].as_object() else {
                continue;
            };
            for (name, versions) in targets {
                for version in versions.as_array().into_iter().flatten() {
                    let state = match version["percent"].as_u64() {
                        Some(percent) => format!("ramping {percent}%"),
                        None => version["state"].as_str().unwrap_or_default().to_owned(),
                    };
                    println!(
                        "{}\t{name}\t{}\t{state}\t{} in flight\t{}\t{}",
                        kind.trim_end_matches('s'),
                        version["sha256"].as_str().unwrap_or_default(),
                        version["inFlight"],
                        version["deployedAt"].as_str().unwrap_or_default(),
                        version["deployedBy"].as_str().unwrap_or_default(),
                    );
                }
            }
        }
        Ok(exit::OK)
    }

    pub async fn list(
        &self,
        operation: Option<String>,
        state: Option<String>,
        after: Option<String>,
        limit: Option<usize>,
    ) -> Result<u8> {
        let state = match state {
            Some(name) => Some(
                serde_json::from_value::<OperationState>(Value::String(name.clone())).map_err(
                    |_| {
                        anyhow::anyhow!(
                            "--state `{name}` is not one of pending, running, completed, failed, cancelled"
                        )
                    },
                )?,
            ),
            None => None,
        };
        let page = self
            .client
            .list(&ListQuery {
                operation,
                state,
                after,
                limit,
            })
            .await?;
        for snapshot in &page.items {
            println!(
                "{}\t{}\t{}\trev {}",
                snapshot.id,
                snapshot.operation,
                snapshot.state.as_str(),
                snapshot.revision
            );
        }
        if let Some(next) = page.next {
            eprintln!("more: --after {next}");
        }
        Ok(exit::OK)
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints the result of a terminal operation: its output, or its error on stderr.
fn report(terminal: &Snapshot) -> Result<u8> {
    if terminal.state == OperationState::Completed {
        println!("{}", serde_json::to_string_pretty(&terminal.output)?);
        return Ok(exit::OK);
    }
    let error = terminal.error.as_ref();
    eprintln!(
        "operation {} ended {}: {} {}",
        terminal.id,
        terminal.state.as_str(),
        error.map(|e| e.code.as_str()).unwrap_or_default(),
        error.map(|e| e.message.as_str()).unwrap_or_default()
    );
    Ok(exit::NOT_COMPLETED)
}

/// Log lines read at once.
const LOG_PAGE: usize = 1000;

/// One log line as a line of text: time, attempt (and job), stream, level, message, fields.
fn log_line(line: &LogLine) -> String {
    let job = line
        .job
        .as_deref()
        .map_or_else(String::new, |job| format!(" job {job}"));
    let (stream, level) = (line.stream.as_str(), line.level.as_str());
    let fields: String = line
        .fields
        .iter()
        .map(|(key, value)| format!(" {key}={value}"))
        .collect();
    format!(
        "{}  attempt {}{job}  {stream:<6} {level:<5}  {}{fields}",
        line.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        line.attempt,
        line.message
    )
}
