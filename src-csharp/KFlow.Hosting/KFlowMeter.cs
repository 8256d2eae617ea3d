// Metrics through System.Diagnostics.Metrics (OpenTelemetry-ready): meter "KFlow" with observable
// instruments read from every running workflow's counters and partitions, tagged with the workflow's
// name (and topic and partition for the per-partition ones). The stage latency histogram is recorded
// by the runtime itself (KFlow.Kafka's StageTiming), in a meter of the same name.
using System;
using System.Collections.Generic;
using System.Diagnostics.Metrics;
using System.Linq;

namespace KFlow.Hosting;

/// <summary>KFlow's meter: listen to <see cref="MeterName"/> (e.g. OpenTelemetry's
/// <c>AddMeter("KFlow")</c>). Every instrument is tagged <c>workflow</c> = the workflow's name; the
/// per-partition ones also <c>topic</c> and <c>partition</c>. A stopped workflow stops reporting.</summary>
/// <remarks>Counters (totals since the start): <c>kflow.consumed</c>, <c>kflow.completed</c>,
/// <c>kflow.written</c>, <c>kflow.pauses</c>, <c>kflow.failures</c>, <c>kflow.restarts</c>,
/// <c>kflow.retries</c>, <c>kflow.dead_lettered</c>. Gauges: <c>kflow.in_flight</c>,
/// <c>kflow.assigned_partitions</c>, <c>kflow.paused_partitions</c>; per partition
/// <c>kflow.committed_offset</c>, <c>kflow.lag</c>, <c>kflow.open_offsets</c>. Histogram:
/// <c>kflow.stage.duration</c> (ms, tag <c>stage</c>). See docs/operations.md.</remarks>
public static class KFlowMeter
{
    /// <summary>The meter's name: "KFlow".</summary>
    public const string MeterName = "KFlow";

    /// <summary>The stage latency histogram's name: "kflow.stage.duration" (milliseconds, tags
    /// <c>workflow</c> and <c>stage</c>): one measurement per message and pure stage, per async call
    /// attempt and per sink write (its retries in place included).</summary>
    public const string StageDuration = "kflow.stage.duration";

    private static readonly object Gate = new();
    private static readonly List<RunningWorkflow> Running = new();
    private static readonly Meter Meter = new(MeterName);

    static KFlowMeter()
    {
        Counter("kflow.consumed", "{message}", "Messages handed to the pipeline (re-reads after a restart count again).", p => p.Consumed);
        Counter("kflow.completed", "{message}", "Messages whose processing finished (sunk, filtered out, dead-lettered).", p => p.Completed);
        Counter("kflow.written", "{value}", "Values written by the sink (batches count their items).", p => p.Written);
        Counter("kflow.pauses", "{pause}", "Times intake paused on the in-flight limits.", p => p.Pauses);
        Counter("kflow.failures", "{failure}", "Failures that stopped the consumer.", p => p.Failures);
        Counter("kflow.restarts", "{restart}", "Restarts from the committed offsets after a failure.", p => p.Restarts);
        Counter("kflow.retries", "{retry}", "Retries in place of sink writes and async calls.", p => p.Retries);
        Counter("kflow.dead_lettered", "{message}", "Messages dead-lettered.", p => p.DeadLettered);
        Gauge("kflow.in_flight", "{message}", "Messages in flight (handed to the pipeline, not finished).", p => p.InFlight);
        Gauge("kflow.assigned_partitions", "{partition}", "Partitions assigned to this instance.", p => p.AssignedPartitions);
        Gauge("kflow.paused_partitions", "{partition}", "Assigned partitions paused now (backpressure or stopping).", p => p.PausedPartitions);
        PartitionGauge("kflow.committed_offset", "{offset}",
            "The offset stored for commit per partition (every message below it is finished).", p => p.Committed);
        PartitionGauge("kflow.lag", "{message}",
            "Messages between the safe commit point (first unfinished offset) and the partition's high watermark.", p => p.Lag);
        PartitionGauge("kflow.open_offsets", "{message}", "Messages of the partition in flight (not finished).",
            p => p.OpenOffsets);
    }

    private static void Counter(string name, string unit, string description, Func<WorkflowProgress, long> read) =>
        Meter.CreateObservableCounter(name, () => Measure(read), unit, description);

    private static void Gauge(string name, string unit, string description, Func<WorkflowProgress, long> read) =>
        Meter.CreateObservableGauge(name, () => Measure(read), unit, description);

    private static void PartitionGauge(string name, string unit, string description, Func<PartitionProgress, long> read) =>
        Meter.CreateObservableGauge(name, () => MeasurePartitions(read), unit, description);

    private static RunningWorkflow[] Snapshot()
    {
        lock (Gate) return Running.ToArray();
    }

    private static IEnumerable<Measurement<long>> Measure(Func<WorkflowProgress, long> read) =>
        Snapshot().Select(w => new Measurement<long>(read(w.Progress), new KeyValuePair<string, object?>("workflow", w.Name)))
            .ToArray();

    // A value of -1 (unknown: no commit yet, no fetch yet) is not reported.
    private static IEnumerable<Measurement<long>> MeasurePartitions(Func<PartitionProgress, long> read) =>
        Snapshot().SelectMany(w => w.Progress.Partitions
                .Select(p => (Value: read(p), Partition: p))
                .Where(m => m.Value >= 0)
                .Select(m => new Measurement<long>(m.Value,
                    new KeyValuePair<string, object?>("workflow", w.Name),
                    new KeyValuePair<string, object?>("topic", m.Partition.Topic),
                    new KeyValuePair<string, object?>("partition", m.Partition.Partition))))
            .ToArray();

    internal static void Track(RunningWorkflow workflow)
    {
        lock (Gate) Running.Add(workflow);
    }

    internal static void Untrack(RunningWorkflow workflow)
    {
        lock (Gate) Running.Remove(workflow);
    }
}
