//! `keelson image`: the node's image store, by hand (air-gapped nodes).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use keelson_nodeagent::images::{Store, table};

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Import an image tarball: an OCI image layout or a `docker save` archive.
    Import(ImportArgs),
    /// List the images on this node.
    Ls(StoreArgs),
}

#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The agent's data directory (images are under DATA_DIR/images).
    #[arg(
        long,
        env = "KEELSON_AGENT_DATA_DIR",
        default_value = "/var/lib/keelson/agent"
    )]
    data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The tarball(s) to import.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
}

fn open(args: &StoreArgs) -> anyhow::Result<Store> {
    let root = args.data_dir.join("images");
    Store::open(&root).with_context(|| format!("the image store at {}", root.display()))
}

pub(crate) fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Import(args) => {
            let store = open(&args.store)?;
            for file in &args.files {
                let images = store
                    .import(file)
                    .with_context(|| format!("importing {}", file.display()))?;
                for image in images {
                    println!("imported {} ({})", image.name, image.manifest);
                }
            }
            Ok(())
        }
        ImageCommand::Ls(args) => {
            println!("{}", table(&open(&args)?.list()?));
            Ok(())
        }
    }
}
