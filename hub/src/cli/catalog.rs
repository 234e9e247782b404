//! `sendense-hub catalog …`: maintenance of the catalog while the hub is stopped.

use std::path::PathBuf;
use std::process::ExitCode;

use hub::config::{Config, FileConfig, Overrides};
use hub::repo::rebuild::Carried;

#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CatalogCommand {
    /// Rebuild the catalog from the manifests in the repositories (the old file is kept).
    Rebuild(RebuildArgs),
}

#[derive(Debug, clap::Args)]
struct RebuildArgs {
    /// TOML configuration file (for its data_dir).
    #[arg(long, value_name = "FILE", env = "SENDENSE_HUB_CONFIG")]
    config: Option<PathBuf>,
    /// The data dir whose catalog is rebuilt [default: ./sendense-data].
    #[arg(long, value_name = "DIR", env = "SENDENSE_HUB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A repository outside the data dir to search too (repeatable), for when the old catalog
    /// that listed it is gone.
    #[arg(long, value_name = "ID=PATH", value_parser = parse_repository)]
    repository: Vec<(String, PathBuf)>,
}

fn parse_repository(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((id, path)) if !id.is_empty() && !path.is_empty() => {
            Ok((id.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("expected ID=PATH, got {s:?}")),
    }
}

pub fn run(args: CatalogArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CatalogCommand::Rebuild(args) => rebuild(args),
    }
}

fn rebuild(args: RebuildArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let overrides = Overrides {
        data_dir: args.data_dir,
        ..Overrides::default()
    };
    let data_dir = Config::resolve(file, overrides)?.data_dir;
    hub::sys::datadir::prepare(&data_dir)?;
    let _lock = hub::sys::datadir::lock(&data_dir)?;
    let report = hub::repo::rebuild::rebuild_catalog(&data_dir, &args.repository)?;
    if let Some(old) = &report.old_catalog {
        println!("previous catalog kept as {}", old.display());
    }
    println!(
        "catalog rebuilt: {} backup(s) in {} repositor{}",
        report.backups,
        report.repositories,
        if report.repositories == 1 { "y" } else { "ies" }
    );
    print_carried(&report.carried);
    for dir in &report.interrupted {
        println!(
            "interrupted creation (removed at the next start): {}",
            dir.display()
        );
    }
    for (dir, claimed, used) in &report.renamed {
        println!(
            "filed under VM {used:?}, the directory's, though its manifest names VM {claimed:?}: {}",
            dir.display()
        );
    }
    if report.skipped.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!("could not rebuild {} backup(s):", report.skipped.len());
    for (dir, why) in &report.skipped {
        match report.quarantined.iter().find(|(from, _)| from == dir) {
            Some((_, to)) => println!(
                "  {}: {why}; moved into quarantine as {} (move it back once repaired, then rebuild again)",
                dir.display(),
                to.display()
            ),
            None => println!("  {}: {why}", dir.display()),
        }
    }
    Ok(ExitCode::FAILURE)
}

/// What came over from the old catalog, or plainly that it was lost and why.
fn print_carried(carried: &Carried) {
    let over = match carried {
        Carried::Over(over) => over,
        Carried::NoOldCatalog | Carried::Lost(_) => {
            let why = match carried {
                Carried::Lost(why) => format!("the previous catalog could not be read: {why}"),
                _ => "there was no previous catalog to carry them over from".to_owned(),
            };
            println!(
                "lost: vCenter credentials, VM contexts, schedules, machine groups, policies and \
                 protection flows ({why}); add them again"
            );
            return;
        }
    };
    println!(
        "carried over from the previous catalog: {} credential(s), {} VM context(s) with {} \
         disk(s), {} schedule(s), {} machine group(s) with {} member(s), {} policy(ies) with {} \
         copy rule(s), {} protection flow(s)",
        over.credentials,
        over.vm_contexts,
        over.vm_disks,
        over.schedules,
        over.machine_groups,
        over.group_members,
        over.policies,
        over.copy_rules,
        over.flows
    );
    println!("not carried over: the job and flow execution history (flows keep their last tick)");
    for what in &over.dropped {
        println!("dropped, its repository or policy is gone: {what}");
    }
}
