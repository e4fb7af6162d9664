//! Why a command never started, and the exit code that says so. The codes are the
//! ones POSIX shells and `docker run` use, so scripts can tell a command that failed
//! from one that could not run: this is the one place they are defined.

/// A task that never reached its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailure {
    /// Cella failed to set the task up (a mount, a limit, a user…): exit code 125.
    Setup,
    /// The command exists but cannot be executed (permissions, format): exit code 126.
    NotExecutable,
    /// The command was not found: exit code 127.
    NotFound,
}

impl StartFailure {
    /// The exit code that reports this failure.
    pub const fn code(self) -> u8 {
        match self {
            StartFailure::Setup => 125,
            StartFailure::NotExecutable => 126,
            StartFailure::NotFound => 127,
        }
    }

    /// [`StartFailure::code`] as a process exit status.
    pub const fn exit_code(self) -> i32 {
        self.code() as i32
    }

    /// The failure an exit code reports, if it is one of the three.
    pub fn from_code(code: i32) -> Option<Self> {
        [
            StartFailure::Setup,
            StartFailure::NotExecutable,
            StartFailure::NotFound,
        ]
        .into_iter()
        .find(|f| i32::from(f.code()) == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for f in [
            StartFailure::Setup,
            StartFailure::NotExecutable,
            StartFailure::NotFound,
        ] {
            assert_eq!(StartFailure::from_code(i32::from(f.code())), Some(f));
        }
        assert_eq!(StartFailure::from_code(0), None);
        assert_eq!(StartFailure::from_code(137), None);
    }
}
