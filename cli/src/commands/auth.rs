//! `cella auth`: credentials for tools that cannot present a client certificate to the
//! HTTP APIs — a bearer token, or a password (argon2) for HTTP basic. Each prints the
//! entry to add to the master's (or an agent's) `--credentials` file.

use std::io::BufRead;

use cella_proto::tls::Identity;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Subcommand, Debug)]
enum AuthCommand {
    /// Make a new random token for USER: prints the token (shown only this once) on
    /// the first line, then the entry for the credentials file (its SHA-256 only).
    Token {
        user: String,
        /// A group of the user, for the ACL (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Refused this many days from now (default: until removed from the file).
        #[arg(long, value_name = "DAYS")]
        days: Option<u32>,
    },
    /// Hash a password for USER (read from the first line of standard input) and print
    /// the entry for the credentials file.
    Password {
        user: String,
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Refused this many days from now (default: until removed from the file).
        #[arg(long, value_name = "DAYS")]
        days: Option<u32>,
    },
}

fn groups_toml(groups: &[String]) -> String {
    let quoted: Vec<String> = groups.iter().map(|g| format!("{g:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

pub fn run(args: AuthArgs) -> i32 {
    let result = match args.command {
        AuthCommand::Token { user, groups, days } => token(&user, &groups, days),
        AuthCommand::Password { user, groups, days } => password(&user, &groups, days),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cella: {e}");
            1
        }
    }
}

/// The `expires = …` line of an entry valid `days` more days (none without).
fn expires_line(days: Option<u32>) -> String {
    let Some(days) = days else {
        return String::new();
    };
    let secs = cella_proto::time::now_secs() + u64::from(days) * 86_400;
    let days_since_epoch = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    let (y, m, d) = civil_from_days(days_since_epoch);
    format!(
        "expires = {y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z\n",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The calendar date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn token(user: &str, groups: &[String], days: Option<u32>) -> Result<(), String> {
    Identity::user(user, groups).map_err(|e| e.to_string())?;
    let token = cella_proto::auth::new_token()?;
    outln!("{token}");
    outln!();
    outln!("# add to the --credentials file (mode 0600):");
    outln!("[[token]]");
    outln!("user = {user:?}");
    outln!("groups = {}", groups_toml(groups));
    outln!("sha256 = {:?}", cella_proto::auth::token_digest(&token));
    out!("{}", expires_line(days));
    Ok(())
}

fn password(user: &str, groups: &[String], days: Option<u32>) -> Result<(), String> {
    Identity::user(user, groups).map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the password from standard input: {e}"))?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err("give the password on standard input (an empty one is refused)".into());
    }
    let hash = cella_proto::auth::hash_password(password)?;
    outln!("# add to the --credentials file (mode 0600):");
    outln!("[[password]]");
    outln!("user = {user:?}");
    outln!("groups = {}", groups_toml(groups));
    outln!("argon2 = '{hash}'");
    out!("{}", expires_line(days));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let line = expires_line(Some(1));
        assert!(
            line.starts_with("expires = 20") && line.ends_with("Z\n"),
            "{line}"
        );
        let text = format!(
            "[[token]]\nuser = \"x\"\nsha256 = \"{}\"\n{line}",
            "0".repeat(64)
        );
        assert!(
            cella_proto::auth::Credentials::parse(&text).is_ok(),
            "{text}"
        );
    }
}
