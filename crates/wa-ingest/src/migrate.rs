use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use wa_store::DatabaseArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseArgs,
}

pub(crate) async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let url = args.database.database_url.expose();
    if !sqlx::Postgres::database_exists(url)
        .await
        .with_context(|| format!("cannot reach DATABASE_URL {}", args.database.database_url))?
    {
        sqlx::Postgres::create_database(url)
            .await
            .context("cannot create the database")?;
        tracing::info!("database created");
    }
    let pool = args.database.pool()?;
    wa_store::migrate(&pool).await.context("migration failed")?;
    tracing::info!(
        latest = wa_store::MIGRATOR
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0),
        "schema is up to date"
    );
    pool.close().await;
    Ok(())
}
