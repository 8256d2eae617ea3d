// What a failure does: restart and replay (the default), retry in place then escalate, dead-letter,
// halt. A pure value per workflow with overrides per stage, and the retry delays it implies.
namespace KFlow.Kafka

open System

/// <summary>What the runtime does when a stage throws, a sink write or an async call fails.</summary>
/// <remarks>Whatever the policy, the failed message's offset is never committed before the policy
/// has finished with it (retried successfully, dead-lettered, or replayed after a restart).</remarks>
[<NoEquality; NoComparison>]
type ErrorPolicy =
    /// Stop the workflow's current incarnation (in-flight work is dropped, nothing is committed past
    /// the failed message), wait, and restart from the committed offsets, so the failed message is
    /// read again; keeps doing so until it goes through. KFlow's default, with Backoff.defaults.
    /// The attempt count resets once an incarnation ran for Backoff.Max without failing.
    | RestartAndReplay of Backoff
    /// Retry the failed step where it failed, up to `retries` more times with the backoff between
    /// tries, without restarting anything; if it still fails, apply `escalate`. Applies to sink writes
    /// and async calls (effects); a pure stage is deterministic, so its retries are skipped and
    /// `escalate` applies at once.
    | RetryInPlace of retries: int * backoff: Backoff * escalate: ErrorPolicy
    /// Produce the original message (key, value, headers) to this topic with the failure in extra
    /// headers (DeadLetter.headers), then finish it so the stream moves on. The offset completes
    /// only once the dead-letter write is acknowledged; if that write fails, the workflow restarts
    /// (RestartAndReplay with the workflow's backoff) and the message is read again.
    | DeadLetter of topic: string
    /// Stop the workflow: the safe commit points are committed, then Completion faults with a
    /// WorkflowFailedException naming the topic, partition, offset and stage.
    | Halt

/// The policy of a workflow and its overrides by stage name (a stage's, sink's or async map's name:
/// "map", "deserialize", the name given to Pipe.sink or Pipe.stateful, …).
[<NoEquality; NoComparison>]
type ErrorPolicies = {
    /// The policy of every stage without an override. Default RestartAndReplay Backoff.defaults.
    Default: ErrorPolicy
    /// Overrides by stage name. Default none.
    Stages: Map<string, ErrorPolicy>
}

/// Functions over ErrorPolicy.
[<RequireQualifiedAccess>]
module ErrorPolicy =
    /// RestartAndReplay with Backoff.defaults (1 s doubling to 30 s, jitter 0.2).
    let defaults = RestartAndReplay Backoff.defaults

    /// The default policy for every stage, no override.
    let policies = {
        Default = defaults
        Stages = Map.empty
    }

    /// Sets the policy of one stage (by name).
    let forStage (stage: string) (policy: ErrorPolicy) (policies: ErrorPolicies) = {
        policies with
            Stages = Map.add stage policy policies.Stages
    }

    /// The policy that applies to a stage: its override, else the default.
    let ofStage (stage: string) (policies: ErrorPolicies) =
        match Map.tryFind stage policies.Stages with
        | Some p -> p
        | None -> policies.Default

    /// What applies once every retry in place is spent: RestartAndReplay, DeadLetter or Halt.
    let rec terminal (policy: ErrorPolicy) =
        match policy with
        | RetryInPlace(_, _, escalate) -> terminal escalate
        | p -> p

    /// How many retries in place the policy allows in all (nested RetryInPlace add up).
    let rec retries (policy: ErrorPolicy) =
        match policy with
        | RetryInPlace(n, _, escalate) -> max 0 n + retries escalate
        | _ -> 0

    /// <summary>The delay before retry in place number <paramref name="retry"/> (1 for the first
    /// retry, after the first failure), or ValueNone when the budget is spent and the terminal policy
    /// applies. Nested RetryInPlace layers run one after another, each with its own backoff counting
    /// from 1. <paramref name="draw"/> is a random number in [0, 1) for the jitter.</summary>
    let rec retryDelay (draw: float) (retry: int) (policy: ErrorPolicy) =
        match policy with
        | RetryInPlace(n, backoff, _) when retry >= 1 && retry <= n ->
            ValueSome(Backoff.jittered draw retry backoff)
        | RetryInPlace(n, _, escalate) when retry > n -> retryDelay draw (retry - max 0 n) escalate
        | _ -> ValueNone

    /// <summary>The policy of a sink write: a policy without retries in place gets the sink's default
    /// budget first (<c>RetryInPlace(retries, backoff, policy)</c>), so a transient failure is retried
    /// without restarting; an explicit RetryInPlace is kept as it is.</summary>
    let forSink (retries: int) (backoff: Backoff) (policy: ErrorPolicy) =
        match policy with
        | RetryInPlace _ -> policy
        | _ when retries > 0 -> RetryInPlace(retries, backoff, policy)
        | _ -> policy

    /// Whether the policy (or its escalation) dead-letters.
    let deadLetters (policy: ErrorPolicy) =
        match terminal policy with
        | DeadLetter _ -> true
        | _ -> false

    /// <summary>The backoff a restart uses after a failure of a stage with this policy: its terminal
    /// RestartAndReplay's, else <paramref name="fallback"/> (a dead-letter write that failed, or a
    /// failure outside any stage).</summary>
    let restartBackoff (fallback: Backoff) (policy: ErrorPolicy) =
        match terminal policy with
        | RestartAndReplay b -> b
        | _ -> fallback

    /// A short readable form, for logs and health reports.
    let rec describe (policy: ErrorPolicy) =
        match policy with
        | RestartAndReplay b -> $"restart and replay (backoff {b.First} to {b.Max})"
        | RetryInPlace(n, b, escalate) ->
            $"retry {n} times (backoff {b.First} to {b.Max}), then {describe escalate}"
        | DeadLetter topic -> $"dead-letter to '{topic}'"
        | Halt -> "halt"

    /// Checks a policy; ArgumentException naming the setting.
    let rec validate (setting: string) (policy: ErrorPolicy) =
        match policy with
        | RestartAndReplay b -> Backoff.validate setting b |> ignore
        | RetryInPlace(n, b, escalate) ->
            if n < 0 then
                invalidSetting setting $"{setting}: RetryInPlace needs retries ≥ 0 (got {n})."

            Backoff.validate setting b |> ignore
            validate setting escalate
        | DeadLetter topic ->
            if String.IsNullOrWhiteSpace topic then
                invalidSetting setting $"{setting}: DeadLetter needs a topic name."
        | Halt -> ()

/// Functions over ErrorPolicies.
[<RequireQualifiedAccess>]
module ErrorPolicies =
    /// Every policy in use (default first, then the overrides).
    let all (policies: ErrorPolicies) =
        policies.Default :: (policies.Stages |> Map.toList |> List.map snd)

    /// Whether some policy in use (or its escalation) dead-letters.
    let deadLetters (policies: ErrorPolicies) =
        all policies |> List.exists ErrorPolicy.deadLetters

    /// The restart backoff of the workflow: its default policy's, or Backoff.defaults.
    let workflowBackoff (policies: ErrorPolicies) =
        ErrorPolicy.restartBackoff Backoff.defaults policies.Default
