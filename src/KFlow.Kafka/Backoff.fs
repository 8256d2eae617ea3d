// Exponential backoff between restarts of a failed workflow: a pure function of the attempt number,
// kept apart so the failure policies of issue 5 (retries, jitter) can grow from it.
namespace KFlow.Kafka

open System

/// How long to wait before restarting after consecutive failures: First, then doubling, capped at Max.
type Backoff = {
    /// The delay before the first restart. Default 1 s.
    First: TimeSpan
    /// The longest delay. Default 30 s.
    Max: TimeSpan
}

/// Functions over Backoff.
[<RequireQualifiedAccess>]
module Backoff =
    /// 1 s doubling up to 30 s.
    let defaults = {
        First = TimeSpan.FromSeconds 1.
        Max = TimeSpan.FromSeconds 30.
    }

    /// The delay before restart number `attempt` (1 for the first): First × 2^(attempt-1), capped at Max.
    let delay (attempt: int) (backoff: Backoff) =
        let exponent = max 0 (attempt - 1) |> min 30
        let ticks = float backoff.First.Ticks * Math.Pow(2., float exponent)

        if ticks >= float backoff.Max.Ticks then
            backoff.Max
        else
            TimeSpan.FromTicks(int64 ticks)

    /// Checks the settings; ArgumentException naming the bad one.
    let validate (setting: string) (backoff: Backoff) =
        if backoff.First <= TimeSpan.Zero then
            invalidSetting
                setting
                $"{setting}.First must be > 0 (got {backoff.First}); it is the delay before the first restart."

        if backoff.Max < backoff.First then
            invalidSetting setting $"{setting}.Max ({backoff.Max}) must be ≥ First ({backoff.First})."

        backoff
