// A started workflow: its progress, its completion, and the graceful stop that also disposes the
// sink's resources once the last write has finished.
using System;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using KFlow.Kafka;

namespace KFlow.Hosting;

/// <summary>A running workflow. Disposing it stops it gracefully (as <see cref="StopAsync"/>).</summary>
public sealed class RunningWorkflow : IAsyncDisposable
{
    private readonly WorkflowHandle _handle;
    private readonly RunContext _context;
    private readonly CancellationTokenSource _stopping;
    private readonly TimeSpan _drainTimeout;
    private readonly Lazy<Task> _stop;

    internal RunningWorkflow(
        string name,
        WorkflowHandle handle,
        RunContext context,
        CancellationTokenSource stopping,
        TimeSpan drainTimeout)
    {
        Name = name;
        _handle = handle;
        _context = context;
        _stopping = stopping;
        _drainTimeout = drainTimeout;
        _stop = new Lazy<Task>(StopOnceAsync);
        KFlowMeter.Track(this);
    }

    /// <summary>The workflow's name.</summary>
    public string Name { get; }

    /// <summary>Completes when the workflow has stopped after <see cref="StopAsync"/>; faults when it
    /// halts on a failure (KafkaSettings.HaltOnFailure).</summary>
    public Task Completion => _handle.Completion;

    /// <summary>A snapshot of the workflow's counters.</summary>
    public WorkflowProgress Progress
    {
        get
        {
            var s = _handle.Stats;
            return new WorkflowProgress(s.Consumed, s.InFlightMessages, _context.Written, s.Pauses, s.Failures,
                s.Restarts, s.AssignedPartitions)
            {
                Completed = s.Completed,
                Retries = s.Retries,
                DeadLettered = s.DeadLettered,
                PausedPartitions = s.PausedPartitions,
                Partitions = s.Partitions.Select(p => new PartitionProgress(p.Topic, p.Partition, p.Committed,
                    p.Position, p.HighWatermark, p.Lag, p.OpenOffsets, p.Paused)).ToArray(),
            };
        }
    }

    /// <summary>Stops gracefully and returns when stopped; never throws (a failure shows in
    /// <see cref="Completion"/>). (1) Intake stops. (2) Aggregates emit what they hold. (3) In-flight
    /// writes and calls finish, for at most KafkaSettings.DrainTimeout (then their token is
    /// cancelled). (4) The offsets reached are committed. (5) The consumer leaves its group. (6) The
    /// sink's resources (a PostgreSQL writer's connections) are disposed. Calling it again waits for
    /// the same stop.</summary>
    public Task StopAsync() => _stop.Value;

    private async Task StopOnceAsync()
    {
        _stopping.CancelAfter(_drainTimeout);
        await _handle.StopAsync().ConfigureAwait(false);
        foreach (var resource in _context.Resources)
        {
            try
            {
                await resource.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception)
            {
                // Disposal after the final commit cannot lose data; a failing pool must not fail the stop.
            }
        }

        _stopping.Dispose();
        KFlowMeter.Untrack(this);
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);
}
