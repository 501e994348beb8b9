//! Changing the log level of a running process, as Kubernetes components
//! take `PUT /debug/flags/v`: the binary installs how (it owns the
//! subscriber); the API server and the agent's endpoint call it.

use std::sync::OnceLock;

type Change = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

static CHANGE: OnceLock<Change> = OnceLock::new();

/// Installs how the process's log filter is replaced (once).
pub fn install(change: impl Fn(&str) -> Result<String, String> + Send + Sync + 'static) {
    let _ = CHANGE.set(Box::new(change));
}

/// What a verbosity (klog's numbers) or a filter means as `tracing`
/// directives: 0–1 info, 2–4 debug, 5 and up trace; anything else is taken
/// as directives (`debug,openraft=warn`).
pub fn directives(asked: &str) -> String {
    let asked = asked.trim();
    match asked.parse::<u8>() {
        Ok(0 | 1) => "info,openraft=warn,hickory_server=warn".into(),
        Ok(2..=4) => "debug,openraft=info,hickory_server=info,h2=info,hyper=info,tower=info".into(),
        Ok(_) => "trace".into(),
        Err(_) => asked.to_owned(),
    }
}

/// Sets the process's log filter from a verbosity or directives: what it
/// is now, or why not (a malformed filter, or a process that cannot).
pub fn change(asked: &str) -> Result<String, String> {
    match CHANGE.get() {
        Some(change) => change(&directives(asked)),
        None => Err("this process's log level cannot be changed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klog_verbosities_map_to_levels() {
        assert!(directives("0").starts_with("info"));
        assert!(directives("3").starts_with("debug"));
        assert_eq!(directives("6"), "trace");
        assert_eq!(
            directives(" warn,keelson_control=debug "),
            "warn,keelson_control=debug"
        );
    }
}
