//! Flag over file: a setting is taken from its flag when given, else from the TOML
//! file, and an error about its value names where it came from (`--flag`, or the
//! key and the file), so the operator knows which one to fix.

use std::path::Path;

/// Where settings may come from besides their flags: a TOML file, and the table of
/// it they are in.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// The `--config` file; `None` when there is none or it is not to be named.
    pub file: Option<&'a Path>,
    /// Put before every key: `""` for the top level, `"images."` for `[images]`.
    pub table: &'static str,
}

impl Sources<'_> {
    /// Names the origin of a value: `--flag`, or the table's key and its file.
    pub fn field(&self, flag: &str, key: &str, from_flag: bool) -> String {
        if from_flag {
            return format!("--{flag}");
        }
        let key = format!("{}{key}", self.table);
        match self.file {
            Some(path) => format!("{key} (in {})", path.display()),
            None => key,
        }
    }

    /// The flag's value if given, else the file's, with the name of its origin; the
    /// key is the flag's name with underscores.
    pub fn pick<T: Clone>(
        &self,
        flag: &str,
        from_flag: &Option<T>,
        from_file: &Option<T>,
    ) -> Option<(T, String)> {
        self.pick_as(flag, &flag.replace('-', "_"), from_flag, from_file)
    }

    /// [`Sources::pick`] for a setting whose key is not its flag's name.
    pub fn pick_as<T: Clone>(
        &self,
        flag: &str,
        key: &str,
        from_flag: &Option<T>,
        from_file: &Option<T>,
    ) -> Option<(T, String)> {
        match (from_flag, from_file) {
            (Some(value), _) => Some((value.clone(), self.field(flag, key, true))),
            (None, Some(value)) => Some((value.clone(), self.field(flag, key, false))),
            (None, None) => None,
        }
    }

    /// A repeatable flag's values if it was given at all, else the file's list (empty
    /// without one), with the name of their origin.
    pub fn list(
        &self,
        flag: &str,
        key: &str,
        from_flag: &[String],
        from_file: &[String],
    ) -> (Vec<String>, String) {
        if from_flag.is_empty() {
            (from_file.to_vec(), self.field(flag, key, false))
        } else {
            (from_flag.to_vec(), self.field(flag, key, true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_and_the_origin_is_named() {
        let file = Path::new("/etc/cella/agent.toml");
        let top = Sources {
            file: Some(file),
            table: "",
        };
        let picked = top.pick("work-dir", &Some(1), &Some(2));
        assert_eq!(picked, Some((1, "--work-dir".to_string())));
        let picked = top.pick("work-dir", &None, &Some(2));
        assert_eq!(
            picked,
            Some((2, "work_dir (in /etc/cella/agent.toml)".to_string()))
        );
        assert_eq!(top.pick::<u8>("work-dir", &None, &None), None);

        let images = Sources {
            file: None,
            table: "images.",
        };
        let picked = images.pick_as("image-store-size", "store_size", &None, &Some(3));
        assert_eq!(picked, Some((3, "images.store_size".to_string())));
        let from_file = ["a".to_string()];
        let (values, field) =
            images.list("insecure-registry", "insecure_registries", &[], &from_file);
        assert_eq!(
            (values, field.as_str()),
            (vec!["a".to_string()], "images.insecure_registries")
        );
        let (values, field) = images.list(
            "insecure-registry",
            "insecure_registries",
            &["b".to_string()],
            &from_file,
        );
        assert_eq!(
            (values, field.as_str()),
            (vec!["b".to_string()], "--insecure-registry")
        );
    }
}
