// Tests of src-csharp/KFlow.Hosting/KFlowMeter.cs: the meter reports a running workflow's counters,
// tagged with its name, and forgets it once stopped.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics.Metrics;
using System.Linq;
using System.Threading.Tasks;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;

namespace KFlowHostingTests;

internal static class KFlowMeterTests
{
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
            foreach (var tag in tags)
                if (tag.Key == "workflow" && (string?)tag.Value == workflow)
                    seen[instrument.Name] = value;
        });
        listener.Start();
        listener.RecordObservableInstruments();
        return new Dictionary<string, long>(seen);
    }

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
    }));
}
