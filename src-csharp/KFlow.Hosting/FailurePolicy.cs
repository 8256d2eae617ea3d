// What a failure (a stage that throws, a failed write or async call) does, for a whole workflow or one
// stage: restart and replay (the default), retry in place then escalate, dead-letter, halt. An
// immutable value built by static methods; the facade turns it into the runtime's ErrorPolicy.
using System;
using KFlow.Kafka;

namespace KFlow.Hosting;

/// <summary>What the runtime does when a stage throws or a write or async call fails. Set it for a
/// workflow with <see cref="WorkflowBuilder.OnFailure(FailurePolicy)"/> or for one stage with
/// <see cref="WorkflowBuilder.OnFailure(string, FailurePolicy)"/>. Whatever the policy, the failed
/// message's offset is not committed before the policy is done with it. Default (nothing set):
/// <see cref="RestartAndReplay"/> with 1 s doubling to 30 s, or <see cref="Halt"/> when
/// KafkaSettings.HaltOnFailure is true.</summary>
public sealed class FailurePolicy
{
    private readonly Func<ErrorPolicy> _core;

    private FailurePolicy(string text, string? problem, Func<ErrorPolicy> core)
    {
        Text = text;
        Problem = problem;
        _core = core;
    }

    private string Text { get; }

    internal string? Problem { get; }

    /// <summary>Stop the workflow's consumer (nothing is committed past the failed message), wait, and
    /// restart from the committed offsets, so the failed message is read again; again and again
    /// until it goes through (a fix deployed meanwhile heals it). The delay starts at
    /// <paramref name="firstDelay"/> (default 1 s) and doubles up to <paramref name="maxDelay"/>
    /// (default 30 s, or firstDelay when that is longer), jitter 0.2.</summary>
    public static FailurePolicy RestartAndReplay(TimeSpan? firstDelay = null, TimeSpan? maxDelay = null) =>
        new($"restart and replay ({firstDelay ?? TimeSpan.FromSeconds(1)} to {maxDelay ?? Max(firstDelay, TimeSpan.FromSeconds(30))})",
            DelayProblem("RestartAndReplay", firstDelay, maxDelay, TimeSpan.FromSeconds(1)),
            () => ErrorPolicyCore.RestartAndReplay(firstDelay, maxDelay));

    /// <summary>Retry the failed write or async call where it failed, up to <paramref name="retries"/>
    /// more times, waiting <paramref name="firstDelay"/> (default 100 ms) doubling up to
    /// <paramref name="maxDelay"/> (default 5 s) between tries; if it still fails, apply
    /// <paramref name="then"/>. A pure stage (Map, Filter, …) is deterministic, so its retries are
    /// skipped and <paramref name="then"/> applies at once.</summary>
    public static FailurePolicy RetryInPlace(
        int retries,
        FailurePolicy then,
        TimeSpan? firstDelay = null,
        TimeSpan? maxDelay = null)
    {
        ArgumentNullException.ThrowIfNull(then);
        var problem = retries < 0
            ? $"RetryInPlace: retries must be ≥ 0 (got {retries})."
            : DelayProblem("RetryInPlace", firstDelay, maxDelay, TimeSpan.FromMilliseconds(100)) ?? then.Problem;
        return new FailurePolicy($"retry {retries} times, then {then.Text}", problem,
            () => ErrorPolicyCore.RetryInPlace(retries, firstDelay, maxDelay, then.ToCore()));
    }

    /// <summary>Produce the failed message (key, value, headers) to <paramref name="topic"/> with the
    /// failure in extra headers (source topic, partition, offset, stage, error, attempts), then move
    /// on. The offset completes once the dead-letter write is acknowledged; if that write fails, the
    /// workflow restarts and the message is read again. The producer uses KafkaSettings.BootstrapServers.</summary>
    public static FailurePolicy DeadLetter(string topic) =>
        new($"dead-letter to '{topic}'",
            string.IsNullOrWhiteSpace(topic) ? "DeadLetter: the topic must not be empty; name the dead-letter topic." : null,
            () => ErrorPolicyCore.DeadLetter(topic));

    /// <summary>Stop the workflow: the safe offsets are committed, then
    /// <see cref="RunningWorkflow.Completion"/> faults naming the partition, offset and stage (a hosted
    /// workflow then stops the host).</summary>
    public static FailurePolicy Halt { get; } = new("halt", null, ErrorPolicyCore.Halt);

    /// <summary>A short readable form, e.g. "retry 3 times, then dead-letter to 'orders-dlq'".</summary>
    public override string ToString() => Text;

    internal ErrorPolicy ToCore() => _core();

    private static TimeSpan Max(TimeSpan? first, TimeSpan defaultMax) => first > defaultMax ? first.Value : defaultMax;

    private static string? DelayProblem(string policy, TimeSpan? first, TimeSpan? max, TimeSpan defaultFirst) =>
        first <= TimeSpan.Zero
            ? $"{policy}: firstDelay must be > 0 (got {first})."
            : max < (first ?? defaultFirst)
                ? $"{policy}: maxDelay ({max}) must be ≥ firstDelay ({first ?? defaultFirst})."
                : null;
}
