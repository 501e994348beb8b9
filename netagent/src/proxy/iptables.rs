//! The I/O half of the proxy: `iptables-restore`, `iptables-save` and
//! `iptables`, run as child processes (in a network namespace of choice).
//!
//! ```text
//!  apply (full)     : iptables-save nat+filter ─► stale KEELSON- chains, drift?
//!                     ─► iptables-restore --noflush (rendered + `-X stale`) ─► iptables -C / -I jumps
//!  apply_changes    : iptables-restore --noflush (only chains that changed since the previous render, `-X` gone ones)
//!  cleanup          : iptables-save ─► iptables-restore --noflush (`-D` jumps, flush and `-X` every KEELSON- chain)
//! ```
//!
//! Only chains named `KEELSON-…` are ever declared, filled, flushed or
//! deleted; in built-in chains only the proxy's own jump rules are inserted
//! or deleted. [`Iptables::restore`] refuses any payload that would do
//! more, so a bug in a caller cannot flush `PREROUTING`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::names;
use super::render::{Rendered, Table};

/// Why an iptables command failed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to `{command}`")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// `iptables-restore` rejected the payload; `line` is 1-based.
    #[error("`{command}` rejected line {line} ({text:?}): {stderr}")]
    Rejected {
        command: String,
        line: usize,
        text: String,
        stderr: String,
    },
    /// The payload would touch a chain that is not the proxy's.
    #[error("refusing to restore line {line} ({text:?}): it touches a chain that is not KEELSON-…")]
    Refused { line: usize, text: String },
    #[error("`{command}` printed output that is not UTF-8")]
    NotUtf8 { command: String },
    #[error("cannot read a version from {output:?}")]
    Version { output: String },
}

impl IptablesError {
    /// `iptables-restore` ran and refused the payload (what
    /// `kubeproxy_sync_proxy_rules_iptables_restore_failures_total` counts).
    pub fn is_restore_failure(&self) -> bool {
        match self {
            Self::Rejected { .. } => true,
            Self::Failed { command, .. } => command.contains("restore"),
            _ => false,
        }
    }
}

/// The two tables the proxy programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableName {
    Nat,
    Filter,
}

impl TableName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Filter => "filter",
        }
    }
}

/// A jump from a built-in chain into one of the proxy's.
#[derive(Clone, Copy, Debug)]
pub struct Jump {
    pub table: TableName,
    pub from: &'static str,
    /// The rule after `-t TABLE -C|-I|-D FROM`, ending in `-j TARGET`.
    pub rule: &'static [&'static str],
}

const NEW: [&str; 4] = ["-m", "conntrack", "--ctstate", "NEW"];

macro_rules! jump {
    ($table:ident, $from:literal, [$($arg:expr),* $(,)?]) => {
        Jump { table: TableName::$table, from: $from, rule: &[$($arg),*] }
    };
}

/// Every jump the proxy needs, as kube-proxy's `iptablesJumpChains`
/// (without the health-check node port chain, which the proxy does not use).
pub const JUMPS: &[Jump] = &[
    jump!(
        Filter,
        "INPUT",
        [
            NEW[0],
            NEW[1],
            NEW[2],
            NEW[3],
            "-m",
            "comment",
            "--comment",
            "keelson externally-visible service portals",
            "-j",
            names::EXTERNAL_SERVICES
        ]
    ),
    jump!(
        Filter,
        "FORWARD",
        [
            NEW[0],
            NEW[1],
            NEW[2],
            NEW[3],
            "-m",
            "comment",
            "--comment",
            "keelson externally-visible service portals",
            "-j",
            names::EXTERNAL_SERVICES
        ]
    ),
    jump!(
        Filter,
        "FORWARD",
        [
            NEW[0],
            NEW[1],
            NEW[2],
            NEW[3],
            "-m",
            "comment",
            "--comment",
            "keelson service portals",
            "-j",
            names::SERVICES
        ]
    ),
    jump!(
        Filter,
        "OUTPUT",
        [
            NEW[0],
            NEW[1],
            NEW[2],
            NEW[3],
            "-m",
            "comment",
            "--comment",
            "keelson service portals",
            "-j",
            names::SERVICES
        ]
    ),
    jump!(
        Filter,
        "FORWARD",
        [
            "-m",
            "comment",
            "--comment",
            "keelson forwarding rules",
            "-j",
            names::FORWARD
        ]
    ),
    jump!(
        Filter,
        "INPUT",
        [
            NEW[0],
            NEW[1],
            NEW[2],
            NEW[3],
            "-m",
            "comment",
            "--comment",
            "keelson load balancer firewall",
            "-j",
            names::PROXY_FIREWALL
        ]
    ),
    jump!(
        Filter,
        "OUTPUT",
        [
            NEW[0],
            NEW[1],
            NEW[2],
            NEW[3],
            "-m",
            "comment",
            "--comment",
            "keelson load balancer firewall",
            "-j",
            names::PROXY_FIREWALL
        ]
    ),
    jump!(
        Filter,
        "FORWARD",
        [
            NEW[0],
            NEW[1],
            NEW[2],
            NEW[3],
            "-m",
            "comment",
            "--comment",
            "keelson load balancer firewall",
            "-j",
            names::PROXY_FIREWALL
        ]
    ),
    jump!(
        Nat,
        "OUTPUT",
        [
            "-m",
            "comment",
            "--comment",
            "keelson service portals",
            "-j",
            names::SERVICES
        ]
    ),
    jump!(
        Nat,
        "PREROUTING",
        [
            "-m",
            "comment",
            "--comment",
            "keelson service portals",
            "-j",
            names::SERVICES
        ]
    ),
    jump!(
        Nat,
        "POSTROUTING",
        [
            "-m",
            "comment",
            "--comment",
            "keelson postrouting rules",
            "-j",
            names::POSTROUTING
        ]
    ),
];

/// The proxy's chains in one table as `iptables-save` printed them, and the
/// rules elsewhere that jump into them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// `KEELSON-…` chains and their rules (`-A CHAIN …` lines).
    pub chains: BTreeMap<String, Vec<String>>,
    /// Rules of other chains (`-A INPUT …`) whose target is a `KEELSON-…` chain.
    pub jumps: Vec<String>,
}

impl SavedTable {
    /// Reads `iptables-save -t TABLE` output.
    pub fn parse(text: &str) -> Self {
        let mut saved = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(':') {
                let chain = rest.split_whitespace().next().unwrap_or_default();
                if chain.starts_with(names::PREFIX) {
                    saved.chains.entry(chain.to_owned()).or_default();
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest.split_whitespace().next().unwrap_or_default();
                if chain.starts_with(names::PREFIX) {
                    saved
                        .chains
                        .entry(chain.to_owned())
                        .or_default()
                        .push(line.to_owned());
                } else if targets_keelson(line) {
                    saved.jumps.push(line.to_owned());
                }
            }
        }
        saved
    }

    /// Whether the kernel holds exactly what `table` says: the same chains
    /// with the same rules in the same order.
    pub fn matches(&self, table: &Table) -> bool {
        self.chains.len() == table.chains().count()
            && table
                .chains()
                .all(|chain| self.chains.get(chain).map(Vec::as_slice) == table.rules_of(chain))
    }
}

/// `-j KEELSON-…` or `-g KEELSON-…` in a saved rule.
fn targets_keelson(line: &str) -> bool {
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if matches!(word, "-j" | "-g" | "--jump" | "--goto")
            && words.next().is_some_and(|t| t.starts_with(names::PREFIX))
        {
            return true;
        }
    }
    false
}

/// What an apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// `iptables-restore` ran (false: the kernel already held the ruleset).
    pub restored: bool,
    /// Chains of earlier syncs deleted.
    pub deleted_chains: usize,
    /// Jump rules that were missing and were inserted.
    pub inserted_jumps: usize,
}

/// What a cleanup removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub deleted_chains: usize,
    pub deleted_jumps: usize,
}

/// How to run the iptables tools. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Iptables {
    /// Words before every command (`ip netns exec NAME`), or none to run in
    /// this process's own network namespace.
    prefix: Vec<String>,
    iptables: String,
    save: String,
    restore: String,
    /// Seconds to wait for the xtables lock (`--wait`).
    wait_seconds: u32,
    /// Longest a command may run before it is killed.
    timeout: Duration,
}

impl Default for Iptables {
    fn default() -> Self {
        Self {
            prefix: Vec::new(),
            iptables: "iptables".into(),
            save: "iptables-save".into(),
            restore: "iptables-restore".into(),
            wait_seconds: 5,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The result of one command.
struct Output {
    stdout: String,
}

impl Iptables {
    /// The tools in this process's network namespace (the node agent runs
    /// inside its node's namespace).
    pub fn new() -> Self {
        Self::default()
    }

    /// The tools run in the named network namespace (`ip netns exec NAME …`).
    pub fn in_netns(name: impl Into<String>) -> Self {
        Self::default().with_prefix(vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            name.into(),
        ])
    }

    /// Runs every command after these words.
    pub fn with_prefix(mut self, prefix: Vec<String>) -> Self {
        self.prefix = prefix;
        self
    }

    /// Other binaries (`iptables-legacy`, `iptables-legacy-save`, …).
    pub fn with_binaries(
        mut self,
        iptables: impl Into<String>,
        save: impl Into<String>,
        restore: impl Into<String>,
    ) -> Self {
        self.iptables = iptables.into();
        self.save = save.into();
        self.restore = restore.into();
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn command_line(&self, program: &str, args: &[&str]) -> String {
        let mut line = String::new();
        for word in self
            .prefix
            .iter()
            .map(String::as_str)
            .chain([program])
            .chain(args.iter().copied())
        {
            if !line.is_empty() {
                line.push(' ');
            }
            if word.is_empty() || word.contains(char::is_whitespace) {
                let _ = write!(line, "{word:?}");
            } else {
                line.push_str(word);
            }
        }
        line
    }

    /// Runs `program args` with `stdin`, returning its output on exit 0.
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, IptablesError> {
        let command = self.command_line(program, args);
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut cmd = tokio::process::Command::new(first);
                cmd.args(rest).arg(program);
                cmd
            }
            None => tokio::process::Command::new(program),
        };
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| IptablesError::Spawn {
            command: command.clone(),
            source,
        })?;
        let io_error = |source| IptablesError::Io {
            command: command.clone(),
            source,
        };
        let writer = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => {
                let input = input.to_owned();
                Some(tokio::spawn(async move {
                    pipe.write_all(input.as_bytes()).await?;
                    pipe.shutdown().await
                }))
            }
            _ => None,
        };
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| IptablesError::Timeout {
                command: command.clone(),
                timeout: self.timeout,
            })?
            .map_err(io_error)?;
        if !output.status.success() {
            return Err(IptablesError::Failed {
                command,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        if let Some(writer) = writer {
            // A short write only matters if the command failed, handled above.
            match writer.await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => return Err(io_error(source)),
                Err(join) => return Err(io_error(std::io::Error::other(join))),
            }
        }
        let stdout =
            String::from_utf8(output.stdout).map_err(|_| IptablesError::NotUtf8 { command })?;
        Ok(Output { stdout })
    }

    /// `iptables --version` as (major, minor, patch).
    ///
    /// # Errors
    /// The command fails or prints no `vX.Y.Z`.
    pub async fn version(&self) -> Result<(u32, u32, u32), IptablesError> {
        let output = self.run(&self.iptables, &["--version"], None).await?;
        parse_version(&output.stdout).ok_or(IptablesError::Version {
            output: output.stdout,
        })
    }

    /// Whether `MASQUERADE --random-fully` is available (iptables ≥ 1.6.2).
    ///
    /// # Errors
    /// As [`Iptables::version`].
    pub async fn supports_random_fully(&self) -> Result<bool, IptablesError> {
        Ok(self.version().await? >= (1, 6, 2))
    }

    /// The proxy's chains in `table` (`iptables-save -t TABLE`).
    ///
    /// # Errors
    /// `iptables-save` cannot run or fails.
    pub async fn save(&self, table: TableName) -> Result<SavedTable, IptablesError> {
        let output = self.run(&self.save, &["-t", table.as_str()], None).await?;
        Ok(SavedTable::parse(&output.stdout))
    }

    /// `iptables-restore --noflush --wait=N` with `payload`, after checking
    /// that it only declares, fills and deletes `KEELSON-…` chains (and
    /// deletes jumps into them).
    ///
    /// # Errors
    /// [`IptablesError::Refused`] for a payload that would touch other
    /// chains; [`IptablesError::Rejected`] with the offending line when
    /// `iptables-restore` names one; otherwise the command's failure.
    pub async fn restore(&self, payload: &str) -> Result<(), IptablesError> {
        check_payload(payload)?;
        let wait = format!("--wait={}", self.wait_seconds);
        match self
            .run(&self.restore, &["--noflush", &wait], Some(payload))
            .await
        {
            Ok(_) => Ok(()),
            Err(IptablesError::Failed {
                command,
                status,
                stderr,
            }) => Err(match failed_line(&stderr) {
                Some(line) => IptablesError::Rejected {
                    command,
                    line,
                    text: payload
                        .lines()
                        .nth(line.saturating_sub(1))
                        .unwrap_or_default()
                        .to_owned(),
                    stderr,
                },
                None => IptablesError::Failed {
                    command,
                    status,
                    stderr,
                },
            }),
            Err(error) => Err(error),
        }
    }

    /// Inserts (at the top) each of [`JUMPS`] that `iptables -C` does not
    /// find. Returns how many were inserted. The target chains must exist
    /// (a restore creates them).
    ///
    /// # Errors
    /// A check fails other than with "no such rule", or an insert fails.
    pub async fn ensure_jumps(&self) -> Result<usize, IptablesError> {
        let wait = self.wait_seconds.to_string();
        let mut inserted = 0;
        for jump in JUMPS {
            let mut args = vec!["-w", &wait, "-t", jump.table.as_str(), "-C", jump.from];
            args.extend_from_slice(jump.rule);
            match self.run(&self.iptables, &args, None).await {
                Ok(_) => continue,
                // Exit 1: no such rule.
                Err(IptablesError::Failed { status, .. }) if status.code() == Some(1) => {}
                Err(error) => return Err(error),
            }
            args[4] = "-I";
            self.run(&self.iptables, &args, None).await?;
            inserted += 1;
        }
        Ok(inserted)
    }

    /// A full sync: reads what the kernel has, restores `rendered` (and
    /// deletes `KEELSON-…` chains it no longer has) unless the kernel holds
    /// exactly that already, then makes sure the jumps are in place.
    ///
    /// # Errors
    /// Any of the commands fails; see [`Iptables::restore`].
    pub async fn apply(&self, rendered: &Rendered) -> Result<Applied, IptablesError> {
        let nat = self.save(TableName::Nat).await?;
        let filter = self.save(TableName::Filter).await?;
        let stale_nat: Vec<&str> = stale(nat.chains.keys().map(String::as_str), rendered.nat());
        let stale_filter: Vec<&str> =
            stale(filter.chains.keys().map(String::as_str), rendered.filter());
        let mut applied = Applied {
            deleted_chains: stale_nat.len() + stale_filter.len(),
            ..Applied::default()
        };
        let in_place = nat.matches(rendered.nat()) && filter.matches(rendered.filter());
        if !in_place || applied.deleted_chains > 0 {
            let payload = with_deletions(rendered.text(), &stale_filter, &stale_nat);
            self.restore(&payload).await?;
            applied.restored = true;
        }
        applied.inserted_jumps = self.ensure_jumps().await?;
        Ok(applied)
    }

    /// An incremental sync, as kube-proxy's partial syncs: rewrites only
    /// the chains whose rules differ from `previous` (the last render
    /// applied), and deletes the chains `previous` had and `rendered` has
    /// not. Neither reads the kernel's tables nor checks the jumps, so
    /// drift waits for the next [`Iptables::apply`].
    ///
    /// # Errors
    /// As [`Iptables::restore`].
    pub async fn apply_changes(
        &self,
        rendered: &Rendered,
        previous: &Rendered,
    ) -> Result<Applied, IptablesError> {
        let (payload, deleted_chains) = changes_payload(rendered, previous);
        if payload.is_empty() {
            return Ok(Applied::default());
        }
        self.restore(&payload).await?;
        Ok(Applied {
            restored: true,
            deleted_chains,
            inserted_jumps: 0,
        })
    }

    /// Removes everything the proxy ever installed: the rules in other
    /// chains that jump into `KEELSON-…` chains, then every `KEELSON-…`
    /// chain of the `nat` and `filter` tables (`keelson agent --cleanup`).
    ///
    /// # Errors
    /// `iptables-save` or `iptables-restore` fails (for example when a
    /// rule the proxy did not write still jumps to one of its chains in a
    /// way it cannot delete).
    pub async fn cleanup(&self) -> Result<Cleaned, IptablesError> {
        let mut cleaned = Cleaned::default();
        let mut payload = String::new();
        for table in [TableName::Filter, TableName::Nat] {
            let saved = self.save(table).await?;
            if saved.chains.is_empty() && saved.jumps.is_empty() {
                continue;
            }
            let _ = writeln!(payload, "*{}", table.as_str());
            for chain in saved.chains.keys() {
                let _ = writeln!(payload, ":{chain} - [0:0]");
            }
            for jump in &saved.jumps {
                if let Some(rule) = jump.strip_prefix("-A ") {
                    let _ = writeln!(payload, "-D {rule}");
                }
            }
            for chain in saved.chains.keys() {
                let _ = writeln!(payload, "-X {chain}");
            }
            payload.push_str("COMMIT\n");
            cleaned.deleted_chains += saved.chains.len();
            cleaned.deleted_jumps += saved.jumps.len();
        }
        if !payload.is_empty() {
            self.restore(&payload).await?;
        }
        Ok(cleaned)
    }
}

/// Chains in `existing` that `table` no longer has.
fn stale<'a>(existing: impl Iterator<Item = &'a str>, table: &Table) -> Vec<&'a str> {
    existing.filter(|chain| !table.has_chain(chain)).collect()
}

/// The payload that turns `previous` into `rendered`: per table, the
/// changed and new chains declared (flushed) and refilled, the gone ones
/// flushed and deleted; unchanged chains are not mentioned. Also returns
/// how many chains it deletes.
pub fn changes_payload(rendered: &Rendered, previous: &Rendered) -> (String, usize) {
    let mut payload = String::new();
    let mut deleted = 0;
    for (name, new, old) in [
        ("filter", rendered.filter(), previous.filter()),
        ("nat", rendered.nat(), previous.nat()),
    ] {
        let changed: Vec<&str> = new
            .chains()
            .filter(|chain| old.rules_of(chain) != new.rules_of(chain))
            .collect();
        let gone = stale(old.chains(), new);
        if changed.is_empty() && gone.is_empty() {
            continue;
        }
        let _ = writeln!(payload, "*{name}");
        for chain in changed.iter().chain(gone.iter()) {
            let _ = writeln!(payload, ":{chain} - [0:0]");
        }
        for chain in &changed {
            for rule in new.rules_of(chain).unwrap_or_default() {
                payload.push_str(rule);
                payload.push('\n');
            }
        }
        for chain in &gone {
            let _ = writeln!(payload, "-X {chain}");
        }
        payload.push_str("COMMIT\n");
        deleted += gone.len();
    }
    (payload, deleted)
}

/// `rendered` followed by blocks that flush and delete the stale chains
/// (a chain must be declared, which flushes it, before it can be deleted).
fn with_deletions(rendered: &str, filter: &[&str], nat: &[&str]) -> String {
    let mut payload = String::with_capacity(rendered.len() + 64 * (filter.len() + nat.len()));
    payload.push_str(rendered);
    for (table, chains) in [("filter", filter), ("nat", nat)] {
        if chains.is_empty() {
            continue;
        }
        let _ = writeln!(payload, "*{table}");
        for chain in chains {
            let _ = writeln!(payload, ":{chain} - [0:0]");
        }
        for chain in chains {
            let _ = writeln!(payload, "-X {chain}");
        }
        payload.push_str("COMMIT\n");
    }
    payload
}

/// Refuses any line that would touch a chain that is not the proxy's:
/// allowed are table and COMMIT lines, comments, `:KEELSON-…` declarations,
/// `-A`/`-X KEELSON-…`, and `-D CHAIN … -j KEELSON-…` (removing a jump).
fn check_payload(payload: &str) -> Result<(), IptablesError> {
    for (index, line) in payload.lines().enumerate() {
        let ours = |rest: &str| rest.starts_with(names::PREFIX);
        let ok = line.is_empty()
            || line.starts_with('#')
            || line == "COMMIT"
            || line.starts_with('*')
            || line.strip_prefix(':').is_some_and(ours)
            || line.strip_prefix("-A ").is_some_and(ours)
            || line.strip_prefix("-X ").is_some_and(ours)
            || (line.starts_with("-D ") && targets_keelson(line));
        if !ok {
            return Err(IptablesError::Refused {
                line: index + 1,
                text: line.to_owned(),
            });
        }
    }
    Ok(())
}

/// The line `iptables-restore` complains about ("Error occurred at line: 5",
/// or "line 5 failed").
fn failed_line(stderr: &str) -> Option<usize> {
    if let Some((_, rest)) = stderr.split_once("line: ") {
        return rest.split_whitespace().next()?.parse().ok();
    }
    let (_, rest) = stderr.split_once("line ")?;
    let (number, after) = rest.split_once(' ')?;
    after.starts_with("failed").then(|| number.parse().ok())?
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let word = text.split_whitespace().find(|w| w.starts_with('v'))?;
    let mut parts = word[1..].split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Chains of one table as a set, for tests and reports.
pub fn chain_set(table: &Table) -> BTreeSet<String> {
    table.chains().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_failed_lines_parse() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)\n"),
            Some((1, 8, 9))
        );
        assert_eq!(parse_version("iptables v1.6\n"), Some((1, 6, 0)));
        assert_eq!(parse_version("nonsense"), None);
        assert_eq!(
            failed_line(
                "iptables-restore v1.8.9 (nf_tables): Chain 'BAR' does not exist\nError occurred at line: 4\nTry"
            ),
            Some(4)
        );
        assert_eq!(failed_line("iptables-restore: line 12 failed"), Some(12));
        assert_eq!(failed_line("something else"), None);
    }

    #[test]
    fn only_the_proxys_chains_may_be_touched() {
        assert!(check_payload("*nat\n:KEELSON-SERVICES - [0:0]\n-A KEELSON-SERVICES -j RETURN\n-X KEELSON-SVC-A\n-D PREROUTING -m comment --comment \"x\" -j KEELSON-SERVICES\nCOMMIT\n").is_ok());
        for bad in [
            ":PREROUTING ACCEPT [0:0]",
            "-A PREROUTING -j KEELSON-SERVICES",
            "-F PREROUTING",
            "-X DOCKER",
            "-D INPUT -j ACCEPT",
            "-I INPUT -j KEELSON-SERVICES",
        ] {
            let error = check_payload(&format!("*nat\n{bad}\nCOMMIT\n")).unwrap_err();
            assert!(
                matches!(error, IptablesError::Refused { line: 2, .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn saved_tables_parse_into_chains_and_jumps() {
        let saved = SavedTable::parse(
            "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:KEELSON-SERVICES - [0:0]\n:KEELSON-SVC-X - [0:0]\n\
             -A PREROUTING -m comment --comment \"keelson service portals\" -j KEELSON-SERVICES\n\
             -A PREROUTING -j OTHER\n-A KEELSON-SERVICES -d 10.0.0.1/32 -j KEELSON-SVC-X\nCOMMIT\n",
        );
        assert_eq!(saved.chains.len(), 2);
        assert_eq!(saved.chains["KEELSON-SERVICES"].len(), 1);
        assert!(saved.chains["KEELSON-SVC-X"].is_empty());
        assert_eq!(saved.jumps.len(), 1);
    }

    #[test]
    fn stale_chains_are_flushed_then_deleted_after_the_payload() {
        let payload = with_deletions("*nat\nCOMMIT\n", &[], &["KEELSON-SVC-A", "KEELSON-SEP-B"]);
        assert_eq!(
            payload,
            "*nat\nCOMMIT\n*nat\n:KEELSON-SVC-A - [0:0]\n:KEELSON-SEP-B - [0:0]\n-X KEELSON-SVC-A\n-X KEELSON-SEP-B\nCOMMIT\n"
        );
        assert!(check_payload(&payload).is_ok());
    }

    #[test]
    fn incremental_payloads_hold_only_what_changed() {
        use crate::proxy::bench::synthetic_input;
        use crate::proxy::render::render;
        use std::sync::Arc;

        let mut input = synthetic_input(3, 2);
        let first = render(&input);
        assert_eq!(changes_payload(&first, &first), (String::new(), 0));
        // One endpoint of svc-0 moves: its SVC chain and the two SEPs change.
        let slice = Arc::make_mut(&mut input.endpoint_slices[0]);
        slice.endpoints[0].addresses = vec!["10.244.200.1".into()];
        let second = render(&input);
        let (payload, deleted) = changes_payload(&second, &first);
        assert_eq!(deleted, 1);
        let port = "bench/svc-0:http";
        let svc = format!("{}{}", names::SVC_PREFIX, names::port_hash(port, "tcp"));
        let old = names::endpoint_chain(port, "tcp", "10.244.0.1:8080");
        let new = names::endpoint_chain(port, "tcp", "10.244.200.1:8080");
        assert_eq!(
            payload
                .lines()
                .filter(|l| l.starts_with(':'))
                .collect::<Vec<_>>(),
            [
                format!(":{new} - [0:0]"),
                format!(":{svc} - [0:0]"),
                format!(":{old} - [0:0]")
            ]
        );
        assert!(payload.starts_with("*nat\n"), "filter did not change");
        assert!(payload.ends_with(&format!("-X {old}\nCOMMIT\n")));
        assert!(!payload.contains("KEELSON-SERVICES"));
        assert!(check_payload(&payload).is_ok());
    }

    #[test]
    fn command_lines_show_the_namespace() {
        let iptables = Iptables::in_netns("keelson-n1");
        assert_eq!(
            iptables.command_line("iptables", &["-C", "INPUT", "--comment", "a b"]),
            "ip netns exec keelson-n1 iptables -C INPUT --comment \"a b\""
        );
    }
}
