//! `netctl completion bash|zsh|fish`: shell completion scripts made from
//! the command line's own definition (subcommands, flags, their help), so
//! they follow it. clap_complete would do this but is not in the offline
//! crate set this project builds from; the scripts are small.

use clap::{Args, Command, ValueEnum};
use std::fmt::Write;

/// `netctl completion` arguments.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete in.
    shell: Shell,
}

/// The shells completions are written for.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Prints the completion script for the shell.
pub fn run(args: CompletionArgs, command: Command) {
    let script = match args.shell {
        Shell::Bash => bash(&command),
        // zsh runs bash completion functions through bashcompinit.
        Shell::Zsh => format!("autoload -U +X bashcompinit && bashcompinit\n{}", bash(&command)),
        Shell::Fish => fish(&command),
    };
    print!("{script}");
}

/// One command of the tree: its path of names and what completes after it.
struct Node<'a> {
    path: Vec<&'a str>,
    command: &'a Command,
}

/// Every command of the tree, depth first, hidden ones left out.
fn nodes(root: &Command) -> Vec<Node<'_>> {
    let mut found = Vec::new();
    let mut stack = vec![Node { path: vec![root.get_name()], command: root }];
    while let Some(node) = stack.pop() {
        for sub in node.command.get_subcommands().filter(|c| !c.is_hide_set()) {
            let mut path = node.path.clone();
            path.push(sub.get_name());
            stack.push(Node { path, command: sub });
        }
        found.push(node);
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// The subcommand names and `--flags` offered after `command`.
fn words(command: &Command) -> Vec<String> {
    let subcommands =
        command.get_subcommands().filter(|c| !c.is_hide_set()).map(|c| c.get_name().to_string());
    let flags = command
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long().map(|long| format!("--{long}")));
    subcommands.chain(flags).chain(["--help".to_string()]).collect()
}

/// A bash function that walks the words typed so far down the command
/// tree, then offers what follows the command reached.
fn bash(root: &Command) -> String {
    let name = root.get_name();
    let function = format!("_{}", name.replace('-', "_"));
    let mut script = format!(
        "# bash completion for {name}: source <({name} completion bash)\n{function}() {{\n    \
         local cur=\"${{COMP_WORDS[COMP_CWORD]}}\" path=\"{name}\" i\n    \
         for ((i = 1; i < COMP_CWORD; i++)); do\n        case \"$path ${{COMP_WORDS[i]}}\" in\n"
    );
    let all = nodes(root);
    for node in all.iter().filter(|n| n.path.len() > 1) {
        let parent = node.path[..node.path.len() - 1].join(" ");
        let _ = writeln!(
            script,
            "            \"{parent} {}\") path=\"{}\" ;;",
            node.command.get_name(),
            node.path.join(" ")
        );
    }
    script.push_str("        esac\n    done\n    case \"$path\" in\n");
    for node in &all {
        let _ = writeln!(
            script,
            "        \"{}\") COMPREPLY=($(compgen -W \"{}\" -- \"$cur\")) ;;",
            node.path.join(" "),
            words(node.command).join(" ")
        );
    }
    let _ = write!(script, "    esac\n}}\ncomplete -o default -F {function} {name}\n");
    script
}

/// fish `complete` lines: a command's subcommands offered once the words
/// of its path are typed and none of its subcommands is, its flags once
/// its path is typed.
fn fish(root: &Command) -> String {
    let name = root.get_name();
    let mut script = format!("# fish completion for {name}: {name} completion fish | source\n");
    let quote = |text: &str| text.replace('\\', "\\\\").replace('\'', "\\'");
    for node in nodes(root) {
        let typed: Vec<String> =
            node.path[1..].iter().map(|word| format!("__fish_seen_subcommand_from {word}")).collect();
        let subcommands: Vec<&Command> =
            node.command.get_subcommands().filter(|c| !c.is_hide_set()).collect();
        let names: Vec<&str> = subcommands.iter().map(|c| c.get_name()).collect();
        let mut next = typed.clone();
        if !names.is_empty() {
            next.push(format!("not __fish_seen_subcommand_from {}", names.join(" ")));
        }
        for sub in &subcommands {
            let about = sub.get_about().map(|a| quote(&a.to_string())).unwrap_or_default();
            let _ = writeln!(
                script,
                "complete -c {name} -f -n '{}' -a {} -d '{about}'",
                next.join("; and "),
                sub.get_name()
            );
        }
        let reached =
            if typed.is_empty() { "__fish_use_subcommand".to_string() } else { typed.join("; and ") };
        for arg in node.command.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                let about = arg.get_help().map(|h| quote(&h.to_string())).unwrap_or_default();
                let _ = writeln!(script, "complete -c {name} -n '{reached}' -l {long} -d '{about}'");
            }
        }
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn scripts_offer_every_command_and_its_flags() {
        let command = crate::cli::Cli::command();
        let bash = bash(&command);
        assert!(bash.contains("\"netctl service update\") COMPREPLY=($(compgen -W \""), "{bash}");
        assert!(bash.contains("\"netctl service update\") path=\"netctl service update\""), "{bash}");
        let update = bash.lines().find(|l| l.contains("\"netctl service update\") COMPREPLY")).unwrap();
        assert!(update.contains("--env-add") && update.contains("--update-parallelism"), "{update}");
        assert!(!bash.contains("task-shim"), "hidden commands stay hidden");
        let fish = fish(&command);
        let node_update = "-n '__fish_seen_subcommand_from node; and not __fish_seen_subcommand_from";
        assert!(fish.lines().any(|l| l.contains(node_update) && l.contains("-a update")), "{fish}");
        let flag =
            "-n '__fish_seen_subcommand_from service; and __fish_seen_subcommand_from update' -l env-add";
        assert!(fish.contains(flag), "{fish}");
    }
}
