//! The deployment store conformance suite, written once against `dyn DeploymentStore` and run
//! against each backend by [`deployment_store_conformance!`]: component bytes kept by sha256,
//! and a deployment log every host reads in the same order.

use std::sync::Arc;

use chrono::Utc;
use opshost_api::{DeployAction, DeployTarget, DeploymentRecord};
use opshost_runtime::store::DeploymentStore;

fn record(target: DeployTarget, action: DeployAction, sha: &str) -> DeploymentRecord {
    DeploymentRecord {
        seq: 0,
        target,
        action,
        sha256: sha.to_owned(),
        by: "ops@acme".to_owned(),
        at: Utc::now(),
    }
}

/// A component is kept under its sha256; keeping the same sha256 again changes nothing.
pub async fn components_are_kept_by_sha256_and_kept_once(store: Arc<dyn DeploymentStore>) {
    assert_eq!(store.component("abc").await.unwrap(), None);
    store
        .put_component("abc", vec![0, 97, 115, 109])
        .await
        .unwrap();
    store.put_component("abc", vec![1, 2, 3]).await.unwrap();
    store.put_component("def", vec![9; 70_000]).await.unwrap();
    assert_eq!(
        store.component("abc").await.unwrap(),
        Some(vec![0, 97, 115, 109])
    );
    assert_eq!(store.component("def").await.unwrap(), Some(vec![9; 70_000]));
}

/// Records come back in the order they were recorded, numbered upwards, each as written.
pub async fn the_log_is_read_in_order_after_a_sequence(store: Arc<dyn DeploymentStore>) {
    let written = [
        record(
            DeployTarget::Operation("Orders.Process".into()),
            DeployAction::Config,
            "a",
        ),
        record(
            DeployTarget::Operation("Orders.Process".into()),
            DeployAction::Deploy { percent: 10 },
            "b",
        ),
        record(
            DeployTarget::Queue("fulfillment".into()),
            DeployAction::Rollback,
            "c",
        ),
    ];
    let mut seqs = Vec::new();
    for record in &written {
        seqs.push(store.record_deployment(record.clone()).await.unwrap());
    }
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
    let all = store.deployments_after(0).await.unwrap();
    assert_eq!(all.len(), 3);
    for ((read, wrote), seq) in all.iter().zip(&written).zip(&seqs) {
        assert_eq!(read.seq, *seq);
        assert_eq!(
            (&read.target, &read.action, &read.sha256, &read.by),
            (&wrote.target, &wrote.action, &wrote.sha256, &wrote.by)
        );
    }
    let after_first = store.deployments_after(seqs[0]).await.unwrap();
    assert_eq!(
        after_first.iter().map(|r| r.seq).collect::<Vec<_>>(),
        seqs[1..]
    );
    assert!(store.deployments_after(seqs[2]).await.unwrap().is_empty());
}

/// Records made at once by many writers each get a sequence of their own.
pub async fn concurrent_records_each_get_their_own_sequence(store: Arc<dyn DeploymentStore>) {
    let writers = (0..8).map(|n| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let target = DeployTarget::Operation(format!("Op{n}"));
            store
                .record_deployment(record(target, DeployAction::Deploy { percent: 100 }, "x"))
                .await
                .unwrap()
        })
    });
    let mut seqs: Vec<u64> = futures::future::join_all(writers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 8);
    assert_eq!(store.deployments_after(0).await.unwrap().len(), 8);
}

/// Generates one `#[tokio::test]` per deployment conformance check for the store that `$make`
/// (an async expression answering the store and a guard to keep) builds.
#[macro_export]
macro_rules! deployment_store_conformance {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn components_are_kept_by_sha256_and_kept_once() {
            let (store, _guard) = $make.await;
            $crate::deployment_conformance::components_are_kept_by_sha256_and_kept_once(store)
                .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_deployment_log_is_read_in_order_after_a_sequence() {
            let (store, _guard) = $make.await;
            $crate::deployment_conformance::the_log_is_read_in_order_after_a_sequence(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_deployment_records_each_get_their_own_sequence() {
            let (store, _guard) = $make.await;
            $crate::deployment_conformance::concurrent_records_each_get_their_own_sequence(store)
                .await;
        }
    };
}
