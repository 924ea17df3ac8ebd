//! `netctl completion`: the scripts a real shell loads and completes with.

use std::process::Command;

/// What bash completes for `words` (the last one being typed) with the
/// script `netctl completion bash` prints.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source <('{}' completion bash)\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_netctl\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        e2e::netctl_bin().display(),
        words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
        words.len() - 1
    );
    let output = Command::new("bash").args(["-c", &script]).output().expect("bash");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

#[test]
fn bash_completes_commands_and_their_flags() {
    assert_eq!(bash_completes(&["netctl", "service", "up"]), ["update"]);
    assert_eq!(bash_completes(&["netctl", "node", "update", "--av"]), ["--availability"]);
    assert_eq!(
        bash_completes(&["netctl", "service", "update", "--env-add", "A=1", "--publish-a"]),
        ["--publish-add"]
    );
    let top = bash_completes(&["netctl", ""]);
    assert!(top.contains(&"service".to_string()) && top.contains(&"completion".to_string()), "{top:?}");
    assert!(!top.contains(&"task-shim".to_string()), "hidden commands are not offered: {top:?}");
}

#[test]
fn zsh_and_fish_scripts_are_printed_and_an_unknown_shell_refused() {
    let run =
        |shell: &str| Command::new(e2e::netctl_bin()).args(["completion", shell]).output().expect("netctl");
    let zsh = run("zsh");
    assert!(
        zsh.status.success()
            && String::from_utf8_lossy(&zsh.stdout).starts_with("autoload -U +X bashcompinit")
    );
    let fish = run("fish");
    assert!(String::from_utf8_lossy(&fish.stdout).contains("complete -c netctl"));
    let refused = run("tcsh");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid value 'tcsh'"));
}
