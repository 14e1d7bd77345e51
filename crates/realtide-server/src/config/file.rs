//! The TOML configuration file (`--config`), and start-up errors that name the setting as the
//! operator wrote it (environment variable, flag or file key).

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path} (REALTIDE_CONFIG/--config)")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("invalid TOML in {path} (REALTIDE_CONFIG/--config): {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A key names no setting, or its value is not a scalar.
    #[error("{path}: {key} {problem}")]
    Key {
        /// The file.
        path: String,
        /// The key.
        key: String,
        /// What is wrong.
        problem: &'static str,
    },
}

/// The configuration file named by `--config <file>` / `--config=<file>` in `args` or by
/// `REALTIDE_CONFIG`, as `(ENV_NAME, value)` pairs. Keys are setting names as environment
/// variables, in any case.
pub fn config_file(args: &[std::ffi::OsString]) -> Result<Option<ConfigFile>, FileError> {
    let mut path = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            path = iter.next().map(|p| p.to_string_lossy().into_owned());
        } else if let Some(value) = arg.strip_prefix("--config=") {
            path = Some(value.to_owned());
        }
    }
    let Some(path) = path.or_else(|| std::env::var("REALTIDE_CONFIG").ok()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| FileError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| FileError::Parse {
            path: path.clone(),
            message: e.message().to_owned(),
        })?;
    let mut pairs = Vec::with_capacity(table.len());
    for (key, value) in table {
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            _ => {
                return Err(FileError::Key {
                    path,
                    key: key.to_ascii_uppercase(),
                    problem: "must be a string, number or boolean",
                });
            }
        };
        pairs.push((key.to_ascii_uppercase(), value));
    }
    Ok(Some(ConfigFile { path, pairs }))
}

/// A loaded configuration file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where it was read from.
    pub path: String,
    /// `(ENV_NAME, value)` pairs.
    pub pairs: Vec<(String, String)>,
}

/// Makes the file's values the defaults of the matching arguments of `command` and of its
/// subcommands, so that flags and the environment still win. Keys matching no setting are an
/// error.
pub fn apply_file(
    mut command: clap::Command,
    file: &ConfigFile,
) -> Result<clap::Command, FileError> {
    fn known(command: &clap::Command, name: &str) -> bool {
        command
            .get_arguments()
            .any(|a| a.get_env().is_some_and(|e| e == name))
            || command.get_subcommands().any(|c| known(c, name))
    }
    fn apply(mut command: clap::Command, name: &str, value: &'static str) -> clap::Command {
        let ids: Vec<clap::Id> = command
            .get_arguments()
            .filter(|a| a.get_env().is_some_and(|e| e == name))
            .map(|a| a.get_id().clone())
            .collect();
        for id in ids {
            command = command.mut_arg(id, |a| a.default_value(value));
        }
        let subcommands: Vec<String> = command
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        for sub in subcommands {
            command = command.mut_subcommand(sub, |c| apply(c, name, value));
        }
        command
    }
    for (name, value) in &file.pairs {
        if name == "REALTIDE_CONFIG" || !known(&command, name) {
            return Err(FileError::Key {
                path: file.path.clone(),
                key: name.clone(),
                problem: "is not a realtide setting",
            });
        }
        // Loaded once per process; clap keeps borrowed defaults.
        let value: &'static str = Box::leak(value.clone().into_boxed_str());
        command = apply(command, name, value);
    }
    Ok(command)
}

/// One line for a command-line error: the setting by its environment name and flag, where
/// the bad value came from (flag, environment or configuration file), and the accepted values.
pub fn describe_args_error(
    command: &clap::Command,
    error: &clap::Error,
    file: Option<&ConfigFile>,
) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => vec![s.clone()],
        Some(ContextValue::Strings(v)) => v.clone(),
        _ => Vec::new(),
    };
    let args = context(ContextKind::InvalidArg);
    let names: Vec<String> = args
        .iter()
        .map(|arg| setting_name(command, arg, file))
        .collect();
    let value = context(ContextKind::InvalidValue).into_iter().next();
    let valid = context(ContextKind::ValidValue);
    match (error.kind(), names.first(), value) {
        (ErrorKind::MissingRequiredArgument, _, _) if !names.is_empty() => {
            format!("missing setting: {}", names.join(", "))
        }
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(name), Some(value)) => {
            let mut line = format!("invalid value '{value}' for {name}");
            if !valid.is_empty() {
                line.push_str(&format!("; accepted values: {}", valid.join(", ")));
            } else if let Some(reason) = std::error::Error::source(error) {
                if reason.to_string() == "value was not a boolean" {
                    // BoolishValueParser's list.
                    line.push_str("; accepted values: true, false, yes, no, on, off, 1, 0");
                } else {
                    line.push_str(&format!(": {reason}"));
                }
            }
            line
        }
        _ => {
            let text = error.to_string();
            text.lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ")
                .to_owned()
        }
    }
}

/// `PORT (--port, from /etc/realtide.toml)` for clap's `--port <PORT>`.
fn setting_name(command: &clap::Command, arg: &str, file: Option<&ConfigFile>) -> String {
    fn find<'a>(command: &'a clap::Command, long: &str) -> Option<&'a clap::Arg> {
        command
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .or_else(|| command.get_subcommands().find_map(|c| find(c, long)))
    }
    let long = arg
        .trim_start_matches("--")
        .split([' ', '='])
        .next()
        .unwrap_or_default();
    let Some(found) = find(command, long) else {
        return format!("'{arg}'");
    };
    let Some(env) = found.get_env().map(|e| e.to_string_lossy().into_owned()) else {
        return format!("--{long}");
    };
    let from_file = file.and_then(|f| f.pairs.iter().any(|(k, _)| *k == env).then_some(&f.path));
    let source = if std::env::args()
        .any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
    {
        "from the command line".to_owned()
    } else if std::env::var_os(&env).is_some() {
        "from the environment".to_owned()
    } else if let Some(path) = from_file {
        format!("from {path}")
    } else {
        return format!("{env} (--{long})");
    };
    format!("{env} (--{long}, {source})")
}
