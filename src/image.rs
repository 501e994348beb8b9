//! `keelson image`: the node's image store, by hand: import tarballs on
//! air-gapped nodes, pull from registries, list.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use keelson_nodeagent::images::{Credentials, PullOptions, Reference, Store, table};

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Import an image tarball: an OCI image layout or a `docker save` archive.
    Import(ImportArgs),
    /// Pull an image from its registry (OCI distribution / Docker registry v2 API).
    Pull(PullArgs),
    /// List the images on this node.
    Ls(StoreArgs),
    /// Load image tarballs into every node of a local cluster (`keelson up`).
    Load {
        /// The tarball(s): OCI image layouts or `docker save` archives.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        profile: crate::local::ProfileArg,
    },
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

#[derive(Debug, Args)]
pub(crate) struct PullArgs {
    /// The image: busybox:1.36, registry.local:5000/team/app@sha256:…
    reference: String,
    /// A registry (HOST:PORT, or HOST) to speak plain HTTP to; loopback
    /// registries always are. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// User name for the registry.
    #[arg(long, requires = "password")]
    username: Option<String>,
    /// Password for the registry (or KEELSON_REGISTRY_PASSWORD, kept out of `ps`).
    #[arg(
        long,
        env = "KEELSON_REGISTRY_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    password: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// Pulls on a thread of its own with its own runtime: `run` is called
/// from inside the binary's runtime, which must not be blocked on.
fn pull(args: &PullArgs) -> anyhow::Result<()> {
    let reference = Reference::parse(&args.reference)?;
    let store = open(&args.store)?;
    let options = PullOptions {
        credentials: match (&args.username, &args.password) {
            (Some(username), Some(password)) => vec![Credentials {
                username: username.clone(),
                password: password.clone(),
            }],
            _ => Vec::new(),
        },
        insecure_registries: args.insecure_registries.clone(),
    };
    let image = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start an async runtime for the pull")?;
                runtime
                    .block_on(store.pull(&reference, &options))
                    .map_err(anyhow::Error::from)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the pull of {reference} panicked"))?
    })?;
    println!("pulled {} ({})", image.name, image.manifest);
    Ok(())
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
        ImageCommand::Pull(args) => pull(&args),
        ImageCommand::Load { files, profile } => crate::local::load_image(&files, &profile.profile),
        ImageCommand::Ls(args) => {
            println!("{}", table(&open(&args)?.list()?));
            Ok(())
        }
    }
}
