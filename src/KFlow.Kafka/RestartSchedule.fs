// The supervisor's memory between restarts, as a pure value: which attempt comes next and when a
// stretch without failure resets it. Tested on a virtual clock (no wall time).
namespace KFlow.Kafka

open System

/// Consecutive failures so far and the delay they call for.
[<Struct>]
type RestartSchedule = {
    /// Failures since the workflow last ran for Backoff.Max without failing (0: healthy).
    ConsecutiveFailures: int
}

/// Functions over RestartSchedule.
[<RequireQualifiedAccess>]
module RestartSchedule =
    /// No failure yet.
    let start = { ConsecutiveFailures = 0 }

    /// <summary>A failure after the incarnation ran for <paramref name="ranFor"/>: the next schedule and
    /// the delay before the restart. A run of Backoff.Max or more without failing counts as healthy,
    /// so the count restarts at 1 (the First delay). <paramref name="draw"/> in [0, 1) is the jitter.</summary>
    let failed (draw: float) (ranFor: TimeSpan) (backoff: Backoff) (schedule: RestartSchedule) =
        let count =
            if ranFor >= backoff.Max then
                1
            else
                schedule.ConsecutiveFailures + 1

        { ConsecutiveFailures = count }, Backoff.jittered draw count backoff

    /// The incarnation has run for Backoff.Max without failing: healthy again.
    let healthy (_: RestartSchedule) = start
