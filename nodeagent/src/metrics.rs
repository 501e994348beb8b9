//! The help text of every metric the agent records, named as the kubelet
//! names them. The work queue and event metrics are the control runtime's
//! ([`keelson_control::metrics::describe_runtime`]).
//!
//! Descriptions go to the recorder installed when they are made: call
//! [`describe`] after installing it.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Describes the agent's metrics.
pub fn describe() {
    keelson_control::metrics::describe_runtime();
    describe_gauge!("kubelet_running_pods", "Pods with a running sandbox.");
    describe_gauge!(
        "kubelet_running_containers",
        "Containers, by state (running)."
    );
    describe_histogram!(
        "kubelet_pod_start_duration_seconds",
        Unit::Seconds,
        "From a pod's creation to all its containers running, as this node saw it."
    );
    describe_histogram!(
        "kubelet_pod_worker_duration_seconds",
        Unit::Seconds,
        "Latency of one sync of a pod by its worker."
    );
    describe_counter!(
        "kubelet_runtime_operations_total",
        "Container runtime operations, by operation type."
    );
    describe_counter!(
        "kubelet_runtime_operations_errors_total",
        "Container runtime operations that failed, by operation type."
    );
    describe_histogram!(
        "kubelet_image_pull_duration_seconds",
        Unit::Seconds,
        "Latency of image pulls, by image size bucket."
    );
    describe_counter!(
        "kubelet_volume_updates_total",
        "Projected volume contents (ConfigMap, Secret, downward API) rewritten, by plugin."
    );
    describe_histogram!(
        "storage_operation_duration_seconds",
        Unit::Seconds,
        "Latency of volume mounts and unmounts, by operation, plugin and status."
    );
    describe_counter!(
        "prober_probe_total",
        "Liveness, readiness and startup probes run, by type and result."
    );
}
