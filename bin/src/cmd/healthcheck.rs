//! `cairn healthcheck`: exit 0 if a node's `/health` answers 200, 1 otherwise.
//!
//! Made for container health checks (a `FROM scratch` image has no curl): the Dockerfile's
//! `HEALTHCHECK` runs `cairn healthcheck` inside the container, against the node's own HTTP port.
//! Only plain `http://` URLs with a numeric IP address are accepted (the blocking client in
//! `cmd/http.rs` resolves no names and speaks no TLS); a malformed URL is a usage error (exit 2).

use std::process::ExitCode;

use anyhow::Result;

/// Arguments of `cairn healthcheck`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// URL of the node's health route (`http://IP:PORT/PATH`; the client's own timeout, 3 s per
    /// connect/read/write, bounds the check).
    #[arg(long, default_value = "http://127.0.0.1:8080/health", env = "CAIRN_HEALTHCHECK_URL")]
    url: String,
    /// Print nothing (the exit code alone tells the result).
    #[arg(long, short)]
    quiet: bool,
}

/// Splits `http://ADDR/PATH` into `("ADDR", "/PATH")`; `None` if it is not such a URL.
fn split_url(url: &str) -> Option<(&str, String)> {
    let rest = url.strip_prefix("http://")?;
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    addr.parse::<std::net::SocketAddr>().ok()?;
    Some((addr, path))
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let Some((addr, path)) = split_url(&args.url) else {
        eprintln!("error: --url must be http://IP:PORT/PATH, got {:?}", args.url);
        return Ok(ExitCode::from(2));
    };
    match super::http::get(addr, &path) {
        Ok((200, _)) => {
            if !args.quiet {
                println!("healthy: {} answered 200", args.url);
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok((status, body)) => {
            if !args.quiet {
                let text = String::from_utf8_lossy(&body);
                let short: String = text.trim().chars().take(200).collect();
                println!("unhealthy: {} answered {status}: {short}", args.url);
            }
            Ok(ExitCode::from(1))
        }
        Err(err) => {
            if !args.quiet {
                println!("unhealthy: {}: {err:#}", args.url);
            }
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/health"),
            Some(("127.0.0.1:8080", "/health".to_string()))
        );
        assert_eq!(split_url("http://10.0.0.1:80"), Some(("10.0.0.1:80", "/".to_string())));
        assert_eq!(split_url("https://127.0.0.1:8080/health"), None);
        assert_eq!(split_url("http://localhost:8080/health"), None);
        assert_eq!(split_url("http://127.0.0.1/health"), None);
    }
}
