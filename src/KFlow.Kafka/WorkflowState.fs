// A workflow's health as values: its state (starting, running, backing off, stopped, failed) and the
// last failure with where it happened, so a workflow stuck on a poison message is visibly unhealthy.
namespace KFlow.Kafka

open System
open KFlow

/// A failure as health reports show it: where, on which message, and what.
[<NoEquality; NoComparison>]
type FailureInfo = {
    /// The partition of the failed message (ValueNone for a consumer-level or start failure).
    TopicPartition: TopicPartition voption
    /// The offset of the failed message, when known.
    Offset: int64 voption
    /// The key of the failed message ("" for a null key), when known.
    Key: string voption
    /// The stage, sink or async map that failed ("consumer", "runtime" or "start" for the runtime).
    Stage: string
    /// What was thrown.
    Error: exn
    /// When the failure reached the supervisor.
    At: DateTimeOffset
}

/// Where a workflow is in its life.
[<RequireQualifiedAccess; NoEquality; NoComparison>]
type WorkflowState =
    /// Workflow.run was called, or a restart began: the consumer is joining its group.
    | Starting
    /// Partitions are assigned and messages flow.
    | Running
    /// A failure stopped the current incarnation; it restarts from the committed offsets after `delay`.
    | BackingOff of failure: FailureInfo * delay: TimeSpan
    /// StopAsync finished.
    | Stopped
    /// The workflow halted (ErrorPolicy.Halt, or a start failure); Completion is faulted.
    | Failed of failure: FailureInfo

/// A snapshot of a workflow's health.
[<NoEquality; NoComparison>]
type WorkflowHealth = {
    /// The current state.
    State: WorkflowState
    /// The last failure (None if none happened).
    LastFailure: FailureInfo option
    /// Failures since the workflow last ran for its backoff's Max without failing: above 0, the
    /// workflow keeps failing (e.g. on a poison message replayed after every restart).
    ConsecutiveFailures: int
}

/// Functions over FailureInfo.
[<RequireQualifiedAccess>]
module FailureInfo =

    /// One line: the stage that failed, where (partition, offset and key, when known) and what was
    /// thrown, e.g. "stage 'map' failed on t[0] at offset 5 (key 'k'): FormatException: bad".
    let describe (f: FailureInfo) =
        let at =
            match f.TopicPartition, f.Offset with
            | ValueSome tp, ValueSome o -> $" on {tp} at offset {o}"
            | ValueSome tp, ValueNone -> $" on {tp}"
            | _ -> ""

        let key =
            match f.Key with
            | ValueSome k -> $" (key '{k}')"
            | ValueNone -> ""

        $"stage '{f.Stage}' failed{at}{key}: {f.Error.GetType().Name}: {f.Error.Message}"

/// Functions over WorkflowHealth.
[<RequireQualifiedAccess>]
module WorkflowHealth =
    /// Healthy: Running with no recent failure (Starting counts as healthy, a start is not a failure).
    let isHealthy (health: WorkflowHealth) =
        match health.State with
        | WorkflowState.Running
        | WorkflowState.Starting -> health.ConsecutiveFailures = 0
        | WorkflowState.Stopped -> true
        | WorkflowState.BackingOff _
        | WorkflowState.Failed _ -> false

    /// A one-line description: the state and, when unhealthy, the last failure with its position.
    let describe (health: WorkflowHealth) =
        let state =
            match health.State with
            | WorkflowState.Starting -> "starting"
            | WorkflowState.Running -> "running"
            | WorkflowState.BackingOff(_, delay) -> $"backing off for {delay}"
            | WorkflowState.Stopped -> "stopped"
            | WorkflowState.Failed _ -> "failed"

        match health.LastFailure with
        | Some f when not (isHealthy health) ->
            $"{state}, {health.ConsecutiveFailures} consecutive failures; last: {FailureInfo.describe f}"
        | _ -> state
