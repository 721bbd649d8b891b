//! Policy decisions for a 5,000-line policy: warm (the decision cache answers) and cold (Casbin
//! evaluates the request's partition). Besides criterion's estimates, prints p50/p99 over
//! individually timed calls, which is what BENCHMARKS.md reports.

use std::path::Path;
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
use common::percentiles;
use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::authz::resources::Templates;
use portcullis::authz::{Authz, Engine, Query, Settings, load_engine};

// The binary's allocator, so allocation-heavy code costs here what it costs in the proxy.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DOMAINS: [&str; 4] = ["airflow", "tekton", "gitlab", "conductor"];
const ACTIONS: [&str; 6] = ["read", "trigger", "clear", "pause", "delete", "create"];

/// 5,000 `p` lines over 4 domains, 6 actions and 209 team roles (each granted every domain and
/// action on its own team's objects), 201 `g` lines mapping groups to roles and one role to a
/// parent: a multi-team gateway. A (domain, action) partition so holds about 209 rules.
fn policy_text() -> String {
    let mut csv = String::new();
    for i in 0..5000 {
        let domain = DOMAINS.get(i % DOMAINS.len()).copied().unwrap_or_default();
        let action = ACTIONS
            .get((i / DOMAINS.len()) % ACTIONS.len())
            .copied()
            .unwrap_or_default();
        let team = i / 24;
        csv.push_str(&format!(
            "p, role:r{team}, {domain}, obj:team{team}_*, {action}\n"
        ));
    }
    for g in 0..200 {
        csv.push_str(&format!("g, group:okta/g{g}, role:r{}, *\n", g % 250));
    }
    csv.push_str("g, role:r1, role:r2, *\n");
    csv
}

fn write_policy(dir: &Path) {
    std::fs::write(
        dir.join("model.conf"),
        std::fs::read_to_string("policies/model.conf").unwrap_or_default(),
    )
    .ok();
    std::fs::write(dir.join("policy.csv"), policy_text()).ok();
}

fn bench(c: &mut Criterion) {
    let Ok(dir) = tempfile::tempdir() else { return };
    write_policy(dir.path());
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    let Ok(templates) = Templates::load(&Default::default()) else {
        return;
    };
    let started = Instant::now();
    let Ok(engine): Result<Engine, _> = runtime.block_on(load_engine(dir.path(), &templates, false)) else {
        eprintln!("the benchmark policy did not load");
        return;
    };
    eprintln!(
        "5,000-line policy built in {:?}; partition (airflow, read) holds {} rules",
        started.elapsed(),
        engine.partition_size("airflow", "read")
    );
    let settings = Settings {
        dir: dir.path().to_path_buf(),
        shadow_dir: None,
        run_tests: false,
        cache_capacity: 100_000,
        show_missing_permission: false,
    };
    let Ok(authz) = runtime.block_on(Authz::load(settings, templates)) else {
        return;
    };

    // group:gN holds role:rN, whose rules are team N's: team 0 is first in every partition,
    // team 199 near the end.
    let early = Query::new(
        &["user:okta/u", "group:okta/g0"],
        "airflow",
        "obj:team0_x",
        "read",
    );
    let late = Query::new(
        &["user:okta/u", "group:okta/g199"],
        "airflow",
        "obj:team199_x",
        "pause",
    );
    let none = Query::new(
        &["user:okta/u", "group:okta/g199"],
        "airflow",
        "obj:nobody",
        "pause",
    );
    for (name, q) in [
        ("early match", &early),
        ("late match", &late),
        ("no match", &none),
    ] {
        let allowed = engine.evaluate(q).map(|v| v.allowed);
        eprintln!("{name}: {allowed:?}");
    }

    let mut group = c.benchmark_group("policy decision, 5,000 lines");
    group.bench_function("warm (cache hit)", |b| {
        runtime.block_on(authz.check(&late));
        b.iter(|| runtime.block_on(authz.check(&late)))
    });
    group.bench_function("cold, late match", |b| b.iter(|| engine.evaluate(&late)));
    group.bench_function("cold, no match", |b| b.iter(|| engine.evaluate(&none)));
    group.bench_function("cold, early match", |b| b.iter(|| engine.evaluate(&early)));
    group.finish();

    // `cargo test --all-targets` runs benches once as a smoke test: skip the timed loops there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let timed = |f: &dyn Fn()| -> Vec<Duration> {
        (0..5000)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect()
    };
    percentiles(
        "warm (cache hit, through Authz::check)",
        timed(&|| {
            runtime.block_on(authz.check(&late));
        }),
    );
    percentiles(
        "cold late match (Casbin, one partition)",
        timed(&|| drop(engine.evaluate(&late))),
    );
    percentiles(
        "cold no match (Casbin, one partition)",
        timed(&|| drop(engine.evaluate(&none))),
    );
    // The load benchmark's policy (one rule): what a new caller costs when Casbin has little to do.
    let small = Settings {
        dir: "benches/load/bearer/policy".into(),
        shadow_dir: None,
        run_tests: false,
        cache_capacity: 100_000,
        show_missing_permission: false,
    };
    if let (Ok(small), Ok(templates)) = (
        runtime.block_on(Authz::load(
            small,
            Templates::load(&Default::default()).unwrap_or_default(),
        )),
        Templates::load(&Default::default()),
    ) {
        let one = runtime.block_on(load_engine(
            Path::new("benches/load/bearer/policy"),
            &templates,
            false,
        ));
        let m = std::cell::Cell::new(0u64);
        let fresh = || {
            m.set(m.get() + 1);
            let who = format!("user:bench/bench-{}", m.get());
            Query::new(&[&who, "group:bench/bench"], "bench", "/", "GET")
        };
        if let Ok(one) = one {
            percentiles(
                "1-rule partition, Casbin evaluation",
                timed(&|| drop(one.evaluate(&fresh()))),
            );
        }
        percentiles(
            "1-rule partition, new caller through Authz::check (miss, evaluation, insert)",
            timed(&|| drop(runtime.block_on(small.check(&fresh())))),
        );
    }
    // A new caller every call through Authz::check: a miss, an early match and the cache insert
    // (what the load benchmark's many-token case does for each new token).
    let n = std::cell::Cell::new(0u64);
    percentiles(
        "new caller each call (Authz::check: miss, evaluation, insert)",
        timed(&|| {
            n.set(n.get() + 1);
            let who = format!("user:okta/u{}", n.get());
            let q = Query::new(&[&who, "group:okta/g0"], "airflow", "obj:team0_x", "read");
            runtime.block_on(authz.check(&q));
        }),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
