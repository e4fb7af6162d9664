//! A `tracing` layer that writes to the systemd journal in its native protocol
//! (systemd.journal-fields(7)): the line as a person reads it in `MESSAGE=` (the
//! message followed by its fields, `key=value`), and every field again as a journal
//! field of its own in capitals (`task_id` → `TASK_ID=`), which `journalctl` can
//! select on.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// journald's socket for native messages.
const SOCKET: &str = "/run/systemd/journal/socket";
/// Longer messages are cut: a datagram must fit the socket's buffer.
const MAX_MESSAGE: usize = 48 * 1024;

/// The layer: one unbound datagram socket, one datagram per event.
pub struct JournalLayer {
    socket: UnixDatagram,
    identifier: String,
}

impl JournalLayer {
    /// A layer whose lines carry `SYSLOG_IDENTIFIER=identifier`.
    pub fn new(identifier: &str) -> std::io::Result<JournalLayer> {
        Ok(JournalLayer {
            socket: UnixDatagram::unbound()?,
            identifier: identifier.to_string(),
        })
    }
}

/// The fields of one event, in order.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.others.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.others.push((field.name(), format!("{value:?}")));
        }
    }
}

/// syslog priorities: error 3, warning 4, info 6, debug 7.
fn priority(level: Level) -> &'static str {
    match level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    }
}

/// A journal field name from a `tracing` field name: capitals, digits and `_`,
/// not starting with `_` (those are journald's own) or a digit.
fn field_name(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = upper.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    if trimmed.is_empty() {
        "FIELD".into()
    } else {
        trimmed.into()
    }
}

/// Appends one field in the native protocol: `NAME=value\n`, or for a value with a
/// newline `NAME\n`, its length (64-bit little endian), the value and `\n`.
fn put(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// The datagram for one event.
fn encode(identifier: &str, level: Level, target: &str, fields: &Fields) -> Vec<u8> {
    let mut message = fields.message.clone();
    for (name, value) in &fields.others {
        let _ = write!(message, " {name}={value}");
    }
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" [cut]");
    }
    let mut buf = Vec::with_capacity(message.len() + 256);
    put(&mut buf, "MESSAGE", &message);
    put(&mut buf, "PRIORITY", priority(level));
    put(&mut buf, "SYSLOG_IDENTIFIER", identifier);
    put(&mut buf, "TARGET", target);
    for (name, value) in &fields.others {
        let mut value = value.as_str();
        if value.len() > MAX_MESSAGE {
            value = "[too long]";
        }
        put(&mut buf, &field_name(name), value);
    }
    buf
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let datagram = encode(&self.identifier, *meta.level(), meta.target(), &fields);
        // Nothing to do if the journal is gone: systemd has stderr as well.
        let _ = self.socket.send_to(&datagram, SOCKET);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_the_native_protocol() {
        let fields = Fields {
            message: "task ended".into(),
            others: vec![
                ("task_id", "t1".into()),
                ("framework_id", "f-2".into()),
                ("why", "a\nb".into()),
            ],
        };
        let out = encode("cella-agent", Level::WARN, "cella_agent::tasks", &fields);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("MESSAGE\n"),
            "a message with a newline is length-prefixed: {text:?}"
        );
        let message = "task ended task_id=t1 framework_id=f-2 why=a\nb";
        let mut expected = b"MESSAGE\n".to_vec();
        expected.extend_from_slice(&(message.len() as u64).to_le_bytes());
        expected.extend_from_slice(message.as_bytes());
        expected.extend_from_slice(b"\nPRIORITY=4\nSYSLOG_IDENTIFIER=cella-agent\n");
        assert!(out.starts_with(&expected));
        assert!(text.contains("\nTASK_ID=t1\n"));
        assert!(text.contains("\nFRAMEWORK_ID=f-2\n"));
        assert!(text.contains("\nWHY\n"));
    }

    #[test]
    fn field_names_journald_accepts() {
        assert_eq!(field_name("task_id"), "TASK_ID");
        assert_eq!(field_name("_private"), "PRIVATE");
        assert_eq!(field_name("log.target"), "LOG_TARGET");
        assert_eq!(field_name("9"), "FIELD");
    }
}
