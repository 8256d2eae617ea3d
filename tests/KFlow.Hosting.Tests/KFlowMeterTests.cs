// Tests of src-csharp/KFlow.Hosting/KFlowMeter.cs (and the runtime's stage latency histogram): the
// meter reports a running workflow's real counters, per-partition offsets, lag and pauses, tagged
// with its name, and forgets it once stopped.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics.Metrics;
using System.Linq;
using System.Text;
using System.Threading.Tasks;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;

namespace KFlowHostingTests;

internal static class KFlowMeterTests
{
    /// <summary>The last value of every observable long instrument for <paramref name="workflow"/>, by
    /// instrument name, with per-partition values keyed "name/partition".</summary>
    private static Dictionary<string, long> Observe(string workflow)
    {
        var seen = new ConcurrentDictionary<string, long>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == KFlowMeter.MeterName) l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            string? name = null;
            object? partition = null;
            foreach (var tag in tags)
            {
                if (tag.Key == "workflow") name = (string?)tag.Value;
                if (tag.Key == "partition") partition = tag.Value;
            }

            if (name == workflow)
                seen[partition is null ? instrument.Name : $"{instrument.Name}/{partition}"] = value;
        });
        listener.Start();
        listener.RecordObservableInstruments();
        return new Dictionary<string, long>(seen);
    }

    private static long[] PerPartition(Dictionary<string, long> measured, string name) =>
        Enumerable.Range(0, 4).Select(p => measured.GetValueOrDefault($"{name}/{p}", -1)).ToArray();

    private static async Task<Dictionary<string, long>> ObserveUntil(string workflow, Func<Dictionary<string, long>, bool> condition, string what)
    {
        var measured = Observe(workflow);
        await WorkflowTests.Until(() => condition(measured = Observe(workflow)), what);
        return measured;
    }

    private static int Number(KafkaMessage m) => int.Parse(Encoding.UTF8.GetString(m.Value!));

    public static readonly Test Tests = Runner.TestSequenced(Runner.TestList("KFlowMeter", new[]
    {
        Runner.TestCase("the KFlow meter reports a running workflow's counters and forgets it once stopped", async () =>
        {
            const string topic = "facade-meter";
            WorkflowTests.Produce(topic, 50, 5);
            var running = await Workflow.FromKafka(topic, "facade-meter")
                .To("nothing", (_, _) => Task.CompletedTask)
                .Build()
                .StartAsync(WorkflowTests.Options());
            await WorkflowTests.Until(() => running.Progress.Written >= 50, "50 messages are written");
            var measured = Observe("facade-meter");
            Expect.AreEqual(measured.GetValueOrDefault("kflow.consumed"), 50L, "kflow.consumed");
            Expect.AreEqual(measured.GetValueOrDefault("kflow.written"), 50L, "kflow.written");
            Expect.IsTrue(measured.ContainsKey("kflow.in_flight") && measured.ContainsKey("kflow.restarts"),
                "gauges and the other counters report too: " + string.Join(", ", measured.Keys));
            await running.StopAsync();
            Expect.IsTrue(Observe("facade-meter").Count == 0, "a stopped workflow is not reported");
        }),
        Runner.TestCase("the meter reports lag, open offsets and paused partitions while a sink holds, then committed offsets, completions, retries, dead letters and stage latencies", async () =>
        {
            const string topic = "facade-meter-all";
            const string name = "facade-meter-all";
            WorkflowTests.Produce(topic, 200, 8);
            var durations = new ConcurrentDictionary<string, int>();
            using var histogram = new MeterListener();
            histogram.InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == KFlowMeter.MeterName && instrument.Name == KFlowMeter.StageDuration)
                    l.EnableMeasurementEvents(instrument);
            };
            histogram.SetMeasurementEventCallback<double>((_, value, tags, _) =>
            {
                var t = tags.ToArray().ToDictionary(kv => kv.Key, kv => kv.Value as string);
                if (t.GetValueOrDefault("workflow") == name && t.GetValueOrDefault("stage") is { } stage && value >= 0)
                    durations.AddOrUpdate(stage, 1, (_, n) => n + 1);
            });
            histogram.Start();
            var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var attempts = new ConcurrentDictionary<int, int>();
            var options = WorkflowTests.Options();
            options.Kafka.MaxOpenOffsetsPerPartition = 10;
            var running = await Workflow.FromKafka(topic, name)
                // 4 values fail in the map and are dead-lettered: 3, 53, 103, 153.
                .Map(m => Number(m) % 50 == 3 ? throw new InvalidOperationException("bad") : Number(m))
                // The first call for each multiple of 20 (10 values) fails once and is retried in place.
                .MapAsync(async (v, _) =>
                {
                    await Task.Yield();
                    if (v % 20 == 0 && attempts.AddOrUpdate(v, 1, (_, n) => n + 1) == 1)
                        throw new TimeoutException("transient");
                    return v;
                })
                .To("held", async (_, _) => await gate.Task)
                .OnFailure("map", FailurePolicy.DeadLetter("facade-meter-dlq"))
                .OnFailure("mapAsync", FailurePolicy.RetryInPlace(3, FailurePolicy.RestartAndReplay(), TimeSpan.FromMilliseconds(10)))
                .Build()
                .StartAsync(options);

            var held = await ObserveUntil(name, m => m.GetValueOrDefault("kflow.paused_partitions") >= 1
                                                     && PerPartition(m, "kflow.lag").Sum() > 0,
                "a partition pauses and lag shows while the sink holds");
            Expect.IsTrue(PerPartition(held, "kflow.open_offsets").Max() > 0, "open offsets show per partition");
            Expect.IsTrue(held.GetValueOrDefault("kflow.in_flight") > 0, "messages are in flight");
            Expect.IsTrue(PerPartition(held, "kflow.open_offsets").All(o => o <= 10 + 1),
                "no partition holds more open offsets than its limit allows");

            gate.SetResult();
            var ends = WorkflowTests.Committed(topic, name).Skip(4).ToArray();
            var done = await ObserveUntil(name, m => m.GetValueOrDefault("kflow.completed") == 200
                                                     && PerPartition(m, "kflow.committed_offset").SequenceEqual(ends),
                "every message completes and every partition's committed offset reaches its end");
            Expect.AreEqual(done.GetValueOrDefault("kflow.consumed"), 200L, "kflow.consumed");
            Expect.SequenceEqual(PerPartition(done, "kflow.lag"), new long[] { 0, 0, 0, 0 }, "no lag once all is committed");
            Expect.SequenceEqual(PerPartition(done, "kflow.open_offsets"), new long[] { 0, 0, 0, 0 }, "no open offset");
            Expect.AreEqual(done.GetValueOrDefault("kflow.dead_lettered"), 4L, "kflow.dead_lettered");
            Expect.AreEqual(done.GetValueOrDefault("kflow.retries"), 10L, "kflow.retries");
            Expect.AreEqual(done.GetValueOrDefault("kflow.restarts"), 0L, "kflow.restarts");
            Expect.AreEqual(done.GetValueOrDefault("kflow.paused_partitions"), 0L, "no partition paused once drained");
            foreach (var stage in new[] { "map", "mapAsync", "held" })
                Expect.IsTrue(durations.GetValueOrDefault(stage) > 0,
                    $"kflow.stage.duration has measurements of '{stage}': " + string.Join(", ", durations));
            Expect.IsTrue(durations.GetValueOrDefault("map") >= 200, "the map is timed for each message");
            await running.StopAsync();
        }),
    }));
}
