//! `cargo xtask docs OUT`: the man pages (`OUT/man/*.1`, one per command and subcommand)
//! and the bash, zsh and fish completions (`OUT/completions/`) of every knockgate binary,
//! generated from their clap definitions, so they can never disagree with `--help`.
//! `deploy/build-debs.sh` packages them.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory as _;
use clap_complete::Shell;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [task, out] = args.as_slice() else {
        eprintln!("usage: cargo xtask docs OUT_DIR");
        return ExitCode::from(64);
    };
    if task != "docs" {
        eprintln!("xtask: unknown task {task:?} (known: docs)");
        return ExitCode::from(64);
    }
    match docs(Path::new(out)) {
        Ok(n) => {
            println!("xtask: wrote {n} man pages and completions under {out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every binary's command, by the name it is installed as.
fn commands() -> [clap::Command; 4] {
    [
        knockgate_agent::cli::Cli::command(),
        knockgate_controller::cli::Cli::command(),
        knockgate_cli::admin::Cli::command(),
        knockgate_cli::cmd::Cli::command(),
    ]
}

/// Writes the pages and completions; returns how many man pages.
fn docs(out: &Path) -> std::io::Result<usize> {
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    let mut pages = 0;
    for cmd in commands() {
        let name = cmd.get_name().to_owned();
        pages += man_pages(cmd.clone(), &name, &name, &man)?;
        for (shell, dir) in [
            (Shell::Bash, "bash"),
            (Shell::Zsh, "zsh"),
            (Shell::Fish, "fish"),
        ] {
            let dir: PathBuf = out.join("completions").join(dir);
            std::fs::create_dir_all(&dir)?;
            clap_complete::generate_to(shell, &mut cmd.clone(), &name, &dir)?;
        }
    }
    Ok(pages)
}

/// `name.1`, then `name-sub.1` for each subcommand, recursively (as git names its pages);
/// a page's synopsis shows the command as typed (`knockadm agent add`).
fn man_pages(cmd: clap::Command, name: &str, typed: &str, dir: &Path) -> std::io::Result<usize> {
    let cmd = cmd.name(name.to_owned()).bin_name(typed.to_owned());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(dir.join(format!("{name}.1")), page)?;
    let mut pages = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let (file, shown) = (
            format!("{name}-{}", sub.get_name()),
            format!("{typed} {}", sub.get_name()),
        );
        pages += man_pages(sub.clone(), &file, &shown, dir)?;
    }
    Ok(pages)
}
