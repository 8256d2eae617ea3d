// Metrics through System.Diagnostics.Metrics (OpenTelemetry-ready): meter "KFlow" with observable
// instruments read from every running workflow's counters, tagged with the workflow's name.
using System.Collections.Generic;
using System.Diagnostics.Metrics;
using System.Linq;

namespace KFlow.Hosting;

/// <summary>KFlow's meter: listen to <see cref="MeterName"/> (e.g. OpenTelemetry's
/// <c>AddMeter("KFlow")</c>). Every instrument is observable and tagged <c>workflow</c> = the
/// workflow's name; a stopped workflow stops reporting.</summary>
/// <remarks>Instruments: <c>kflow.consumed</c>, <c>kflow.written</c>, <c>kflow.pauses</c>,
/// <c>kflow.failures</c>, <c>kflow.restarts</c> (counters); <c>kflow.in_flight</c>,
/// <c>kflow.assigned_partitions</c> (gauges).</remarks>
public static class KFlowMeter
{
    /// <summary>The meter's name: "KFlow".</summary>
    public const string MeterName = "KFlow";

    private static readonly object Gate = new();
    private static readonly List<RunningWorkflow> Running = new();
    private static readonly Meter Meter = new(MeterName);

    static KFlowMeter()
    {
        Counter("kflow.consumed", "{message}", "Messages handed to the pipeline (re-reads after a restart count again).", p => p.Consumed);
        Counter("kflow.written", "{value}", "Values written by the sink (batches count their items).", p => p.Written);
        Counter("kflow.pauses", "{pause}", "Times intake paused on the in-flight limits.", p => p.Pauses);
        Counter("kflow.failures", "{failure}", "Failures that stopped the consumer.", p => p.Failures);
        Counter("kflow.restarts", "{restart}", "Restarts from the committed offsets after a failure.", p => p.Restarts);
        Meter.CreateObservableGauge("kflow.in_flight", () => Measure(p => p.InFlight), "{message}",
            "Messages in flight (handed to the pipeline, not finished).");
        Meter.CreateObservableGauge("kflow.assigned_partitions", () => Measure(p => (long)p.AssignedPartitions), "{partition}",
            "Partitions assigned to this instance.");
    }

    private static void Counter(string name, string unit, string description, System.Func<WorkflowProgress, long> read) =>
        Meter.CreateObservableCounter(name, () => Measure(read), unit, description);

    private static IEnumerable<Measurement<long>> Measure(System.Func<WorkflowProgress, long> read)
    {
        RunningWorkflow[] running;
        lock (Gate) running = Running.ToArray();
        return running.Select(w => new Measurement<long>(read(w.Progress), new KeyValuePair<string, object?>("workflow", w.Name))).ToArray();
    }

    internal static void Track(RunningWorkflow workflow)
    {
        lock (Gate) Running.Add(workflow);
    }

    internal static void Untrack(RunningWorkflow workflow)
    {
        lock (Gate) Running.Remove(workflow);
    }
}
