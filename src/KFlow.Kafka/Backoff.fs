// Exponential backoff between restarts of a failed workflow and between retries in place: a pure
// function of the attempt number (and of a random draw for the jitter), so it is tested without time.
namespace KFlow.Kafka

open System

/// How long to wait after consecutive failures: First, then doubling, capped at Max, each delay
/// shortened by up to Jitter of itself at random (so instances failing together spread out).
type Backoff = {
    /// The delay before the first retry or restart (the base). Default 1 s.
    First: TimeSpan
    /// The longest delay (the cap). Default 30 s.
    Max: TimeSpan
    /// The fraction (0 to 1) by which a delay may be shortened at random: a delay d becomes a value
    /// in [(1 - Jitter) × d, d], never above Max. Default 0.2.
    Jitter: float
}

/// Functions over Backoff.
[<RequireQualifiedAccess>]
module Backoff =
    /// 1 s doubling up to 30 s, jitter 0.2.
    let defaults = {
        First = TimeSpan.FromSeconds 1.
        Max = TimeSpan.FromSeconds 30.
        Jitter = 0.2
    }

    /// The delay before retry or restart number `attempt` (1 for the first), without jitter:
    /// First × 2^(attempt-1), capped at Max.
    let delay (attempt: int) (backoff: Backoff) =
        let exponent = max 0 (attempt - 1) |> min 30
        let ticks = float backoff.First.Ticks * Math.Pow(2., float exponent)

        if ticks >= float backoff.Max.Ticks then
            backoff.Max
        else
            TimeSpan.FromTicks(int64 ticks)

    /// <summary>The delay before attempt number <paramref name="attempt"/> with the jitter applied:
    /// <c>delay × (1 - Jitter × draw)</c>, where <paramref name="draw"/> is a random number in [0, 1)
    /// (clamped into it).</summary>
    let jittered (draw: float) (attempt: int) (backoff: Backoff) =
        let draw = if Double.IsNaN draw then 0. else min 1. (max 0. draw)
        let d = delay attempt backoff
        TimeSpan.FromTicks(int64 (float d.Ticks * (1. - backoff.Jitter * draw)))

    /// Checks the settings; ArgumentException naming the bad one.
    let validate (setting: string) (backoff: Backoff) =
        if backoff.First <= TimeSpan.Zero then
            invalidSetting
                setting
                $"{setting}.First must be > 0 (got {backoff.First}); it is the delay before the first restart."

        if backoff.Max < backoff.First then
            invalidSetting setting $"{setting}.Max ({backoff.Max}) must be ≥ First ({backoff.First})."

        if not (backoff.Jitter >= 0. && backoff.Jitter <= 1.) then
            invalidSetting
                setting
                $"{setting}.Jitter must be in [0, 1] (got {backoff.Jitter}); it is the fraction by which a delay may be shortened at random."

        backoff
