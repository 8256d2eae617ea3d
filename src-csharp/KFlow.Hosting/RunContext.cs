// What a workflow's stages and sinks share while it runs: the stop token, the options, the
// counters the progress reads, and the resources to dispose once it has stopped.
using System;
using System.Collections.Concurrent;
using System.Threading;

namespace KFlow.Hosting;

internal sealed class RunContext(KFlowOptions options, CancellationToken stopping)
{
    private long _written;

    /// <summary>A context for checking a pipe at Build(): nothing runs with it.</summary>
    internal static RunContext DryRun() => new(new KFlowOptions(), CancellationToken.None);

    internal KFlowOptions Options { get; } = options;

    internal CancellationToken Stopping { get; } = stopping;

    internal ConcurrentBag<IAsyncDisposable> Resources { get; } = new();

    internal long Written => Interlocked.Read(ref _written);

    internal void AddWritten(long count) => Interlocked.Add(ref _written, count);
}
