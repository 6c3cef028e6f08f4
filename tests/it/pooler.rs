//! The service behind a real PgBouncer in transaction pooling mode.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::common::fresh_db;
use crate::common::pooler::PgBouncer;

async fn probe_with(persistent: bool, in_tx: bool) -> (usize, usize) {
    let db = fresh_db().await;
    let bouncer = PgBouncer::start("probe", &db.url, "transaction", 2).unwrap();
    let url = bouncer.url_through(&db.url);
    let opts = PgConnectOptions::from_str(&url)
        .unwrap()
        .statement_cache_capacity(0);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..8i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let (mut errors, mut wrong) = (0, 0);
            for i in 0..200i64 {
                let sql = if t % 2 == 0 { "select $1::int8 + 1" } else { "select $1::int8 * 1000" };
                let expected = if t % 2 == 0 { i + 1 } else { i * 1000 };
                let r: Result<i64, _> = if in_tx {
                    let mut tx = pool.begin().await.unwrap();
                    let r = sqlx::query_scalar(sql).bind(i).persistent(persistent).fetch_one(&mut *tx).await;
                    let _ = tx.commit().await;
                    r
                } else {
                    sqlx::query_scalar(sql).bind(i).persistent(persistent).fetch_one(&pool).await
                };
                match r {
                    Ok(v) if v == expected => {}
                    Ok(_) => wrong += 1,
                    Err(e) => { if errors == 0 { eprintln!("{e}"); } errors += 1 }
                }
            }
            (errors, wrong)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        let (e, w) = t.await.unwrap();
        total.0 += e;
        total.1 += w;
    }
    total
}

#[tokio::test]
async fn probe() {
    for (p, tx) in [(true, false), (false, false), (true, true), (false, true)] {
        let r = probe_with(p, tx).await;
        eprintln!("persistent={p} in_tx={tx}: errors={} wrong={}", r.0, r.1);
    }
}
