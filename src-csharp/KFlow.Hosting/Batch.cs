// The limits of an aggregation: a batch is emitted when it holds MaxMessages values or when its
// first value has waited MaxAge, whichever comes first (and on revoke and shutdown).
using System;

namespace KFlow.Hosting;

/// <summary>When <see cref="Flow{T}.Aggregate(Batch)"/> emits a batch. Immutable: change it with
/// <c>with</c> or the <c>With…</c> methods. At least one limit must be set; <c>Build()</c> checks it.
/// </summary>
public sealed record Batch
{
    /// <summary>Emit when this many values are held. Default null (no count limit).</summary>
    public int? MaxMessages { get; init; }

    /// <summary>Emit once the batch's first value has waited this long (checked on every message and
    /// on the workflow's 1 s tick). Default null (no age limit).</summary>
    public TimeSpan? MaxAge { get; init; }

    /// <summary>Batches of <paramref name="maxMessages"/> values (≥ 1).</summary>
    public static Batch OfMessages(int maxMessages) => new() { MaxMessages = maxMessages };

    /// <summary>Batches of whatever arrived within <paramref name="maxAge"/> of the batch's first value.</summary>
    public static Batch Within(TimeSpan maxAge) => new() { MaxAge = maxAge };

    /// <summary>This batch with an age limit too.</summary>
    public Batch WithMaxAge(TimeSpan maxAge) => this with { MaxAge = maxAge };

    /// <summary>This batch with a count limit too.</summary>
    public Batch WithMaxMessages(int maxMessages) => this with { MaxMessages = maxMessages };

    internal string? Problem() =>
        MaxMessages is null && MaxAge is null
            ? "Aggregate: the batch sets no limit; use Batch.OfMessages(n) or Batch.Within(maxAge)."
            : MaxMessages < 1
                ? $"Aggregate: Batch.MaxMessages must be ≥ 1 (got {MaxMessages})."
                : MaxAge <= TimeSpan.Zero
                    ? $"Aggregate: Batch.MaxAge must be > 0 (got {MaxAge})."
                    : null;
}
