//! What the shim tells its launcher on the run directory's `events` FIFO, encoded and
//! decoded here and nowhere else. One event a line, in text so that a person can
//! read it (`cat events`) and a launcher of one version can read the shim of another:
//!
//! | event | line |
//! |---|---|
//! | the task exec'd its command | `running PID` |
//! | it never did | `failed CODE MESSAGE` (CODE: 125, 126 or 127, see [`StartFailure`]) |
//! | the task ended and its status is recorded | `exited` |

use crate::start_failure::StartFailure;

/// One event from the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShimEvent {
    /// The task exec'd its command; `pid` is its pid in the launcher's namespace.
    Running { pid: i32 },
    /// The task never reached its command.
    Failed {
        failure: StartFailure,
        message: String,
    },
    /// The task has ended and `exit_status` is written; the shim's last event.
    Exited,
}

/// A line that is not an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unexpected event from the shim: {line:?} ({why})")]
pub struct EventError {
    pub line: String,
    pub why: &'static str,
}

impl ShimEvent {
    /// The event as one line, newline included. A message's own newlines become
    /// spaces: the line is the unit of the protocol.
    pub fn encode(&self) -> String {
        match self {
            ShimEvent::Running { pid } => format!("running {pid}\n"),
            ShimEvent::Failed { failure, message } => {
                format!("failed {} {}\n", failure.code(), message.replace('\n', " "))
            }
            ShimEvent::Exited => "exited\n".to_string(),
        }
    }

    /// Parses one line (without or with its newline).
    pub fn decode(line: &str) -> Result<Self, EventError> {
        let err = |why| EventError {
            line: line.to_string(),
            why,
        };
        let line = line.strip_suffix('\n').unwrap_or(line);
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "running" => rest
                .parse()
                .ok()
                .filter(|pid| *pid > 0)
                .map(|pid| ShimEvent::Running { pid })
                .ok_or_else(|| err("running needs a pid")),
            "failed" => {
                let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
                let failure = code
                    .parse()
                    .ok()
                    .and_then(StartFailure::from_code)
                    .ok_or_else(|| err("failed needs a code of 125, 126 or 127"))?;
                Ok(ShimEvent::Failed {
                    failure,
                    message: message.to_string(),
                })
            }
            "exited" if rest.is_empty() => Ok(ShimEvent::Exited),
            _ => Err(err("not running, failed or exited")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let events = [
            ShimEvent::Running { pid: 4242 },
            ShimEvent::Failed {
                failure: StartFailure::NotFound,
                message: "nope: command not found".into(),
            },
            ShimEvent::Failed {
                failure: StartFailure::Setup,
                message: String::new(),
            },
            ShimEvent::Failed {
                failure: StartFailure::NotExecutable,
                message: "./x: permission denied".into(),
            },
            ShimEvent::Exited,
        ];
        for event in events {
            let line = event.encode();
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{line:?}"
            );
            assert_eq!(ShimEvent::decode(&line), Ok(event));
        }
        // The text a person or an older launcher reads.
        assert_eq!(ShimEvent::Running { pid: 7 }.encode(), "running 7\n");
        assert_eq!(
            ShimEvent::decode("failed 126 a b c"),
            Ok(ShimEvent::Failed {
                failure: StartFailure::NotExecutable,
                message: "a b c".into()
            })
        );
    }

    #[test]
    fn a_message_stays_on_its_line() {
        let event = ShimEvent::Failed {
            failure: StartFailure::Setup,
            message: "mount /x\nfailed".into(),
        };
        assert_eq!(event.encode(), "failed 125 mount /x failed\n");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for line in [
            "",
            "\n",
            "running",
            "running ",
            "running x",
            "running -5",
            "running 99999999999999999999",
            "failed",
            "failed 1 message",
            "failed 0",
            "failed abc oops",
            "exited now",
            "ready 1",
            "RUNNING 1",
            "\u{0}\u{ffff}",
        ] {
            let result = ShimEvent::decode(line);
            assert!(result.is_err(), "{line:?} decoded as {result:?}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_line_decodes_or_errs(line in ".*") {
            let _ = ShimEvent::decode(&line);
        }

        #[test]
        fn any_failure_message_round_trips(code in 125u8..=127, message in "[^\n]*") {
            let failure = StartFailure::from_code(i32::from(code)).expect("a start failure code");
            let event = ShimEvent::Failed { failure, message };
            prop_assert_eq!(ShimEvent::decode(&event.encode()), Ok(event));
        }
    }
}
