// Tests of src-csharp/KFlow.Hosting/KFlowWorkflow.cs and RunningWorkflow.cs on the embedded Kafka
// cluster: every stage of the facade runs on the real runtime, directly and as a hosted service.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using Confluent.Kafka;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;
using KFlow.Testing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace KFlowHostingTests;

internal static class WorkflowTests
{
    private static readonly Lazy<EmbeddedKafkaCluster> Cluster = new(() => EmbeddedKafka.Start(1));

    internal static KFlowOptions Options() => new()
    {
        Kafka = new KafkaSettings
        {
            BootstrapServers = Cluster.Value.BootstrapServers,
            Properties = FastClientSettings.Consumer.Where(kv => kv.Key != "auto.offset.reset")
                .ToDictionary(kv => kv.Key, kv => kv.Value),
            CommitInterval = TimeSpan.FromMilliseconds(200),
        },
    };

    internal static void Produce(string topic, int count, int keys)
    {
        Cluster.Value.CreateTopic(topic, 4);
        using var producer = new ProducerBuilder<string, string>(Cluster.Value.ProducerConfig()).Build();
        for (var i = 0; i < count; i++)
            producer.Produce(topic, new Message<string, string> { Key = $"k{i % keys}", Value = i.ToString() });
        producer.Flush(TimeSpan.FromSeconds(30));
    }

    private static long[] Committed(string topic, string group)
    {
        using var consumer = new ConsumerBuilder<byte[], byte[]>(Cluster.Value.ConsumerConfig(group)).Build();
        var partitions = Enumerable.Range(0, 4).Select(p => new TopicPartition(topic, p)).ToList();
        var committed = consumer.Committed(partitions, TimeSpan.FromSeconds(10));
        var ends = partitions.Select(tp => consumer.QueryWatermarkOffsets(tp, TimeSpan.FromSeconds(10)).High.Value);
        // A partition without a commit (no message ever) reports Offset.Unset (-1001): count it as 0.
        return committed.Select(c => Math.Max(0, c.Offset.Value)).Concat(ends).ToArray();
    }

    internal static async Task Until(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new Expecto.AssertException($"timed out waiting until {what}");
            await Task.Delay(50);
        }
    }

    public static readonly Test Tests = Runner.TestSequenced(Runner.TestList("Workflow", new[]
    {
        Runner.TestCase("map, filter, unfold, async map, demux, scan and aggregate run on Kafka and commit every offset", async () =>
        {
            const string topic = "facade-stages";
            Produce(topic, 400, 8);
            var written = new ConcurrentBag<(string Key, int Value, int Seen)>();
            var workflow = Workflow.FromKafka(topic, "facade-stages")
                .Map(m => (m.Key, Value: int.Parse(Encoding.UTF8.GetString(m.Value!))))
                .Filter(e => e.Value % 2 == 0)
                .Unfold(e => new[] { e, (Key: e.Key, Value: e.Value + 1) })
                .MapAsync(async (e, _) =>
                {
                    await Task.Yield();
                    return e;
                }, parallelism: 4)
                .Demux(e => e.Key)
                .Scan("seen", 0, (seen, e) => (seen + 1, (IReadOnlyList<(string Key, int Value, int Seen)>)new[] { (e.Key, e.Value, seen + 1) }))
                .Aggregate(Batch.OfMessages(7))
                .To("collect", (batch, _) =>
                {
                    foreach (var e in batch) written.Add(e);
                    return Task.CompletedTask;
                })
                .Build();
            var running = await workflow.StartAsync(Options());
            await Until(() => running.Progress.Consumed >= 400, "all 400 messages are consumed");
            await running.StopAsync();
            Expect.IsTrue(running.Completion.IsCompletedSuccessfully, "the workflow stopped without failure");
            Expect.SequenceEqual(written.Select(e => e.Value).OrderBy(v => v), Enumerable.Range(0, 400).OrderBy(v => v),
                "the even values and their successors are written, each once");
            foreach (var key in written.GroupBy(e => e.Key))
                Expect.SequenceEqual(key.Select(e => e.Seen).OrderBy(s => s), Enumerable.Range(1, key.Count()),
                    $"the scan's state counts the values of {key.Key}");
            Expect.AreEqual(running.Progress.Written, 400L, "every written value is counted");
            var offsets = Committed(topic, "facade-stages");
            Expect.SequenceEqual(offsets.Take(4), offsets.Skip(4), "committed offsets = end offsets after the stop");
        }),
        Runner.TestCase("ToKafka writes each value to the output topic and commits the input", async () =>
        {
            const string topic = "facade-kafka-in";
            Produce(topic, 100, 5);
            var running = await Workflow.FromKafka(topic, "facade-kafka")
                .Map(m => (m.Key, Text: Encoding.UTF8.GetString(m.Value!)))
                .ToKafka("facade-kafka-out", e => e.Key, e => "v" + e.Text)
                .Build()
                .StartAsync(Options());
            await Until(() => running.Progress.Written >= 100, "100 messages are produced");
            await running.StopAsync();
            using var reader = new ConsumerBuilder<string, string>(Cluster.Value.ConsumerConfig("facade-kafka-reader")).Build();
            reader.Subscribe("facade-kafka-out");
            var read = new List<(string Key, string Value)>();
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (read.Count < 100 && DateTime.UtcNow < deadline)
                if (reader.Consume(TimeSpan.FromMilliseconds(200)) is { } r) read.Add((r.Message.Key, r.Message.Value));
            reader.Close();
            Expect.SequenceEqual(read.Select(r => r.Value).OrderBy(v => v, StringComparer.Ordinal),
                Enumerable.Range(0, 100).Select(i => "v" + i).OrderBy(v => v, StringComparer.Ordinal), "every value was written once");
            Expect.IsTrue(read.All(r => r.Key == "k" + (int.Parse(r.Value[1..]) % 5)),
                "each message keeps its input's key");
            var offsets = Committed(topic, "facade-kafka");
            Expect.SequenceEqual(offsets.Take(4), offsets.Skip(4), "the input's committed offsets = its end offsets");
        }),
        Runner.TestCase("a workflow added with AddKFlow starts and stops with the host", async () =>
        {
            const string topic = "facade-hosted";
            Produce(topic, 100, 4);
            var count = 0;
            var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
            var options = Options();
            builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["KFlow:Kafka:BootstrapServers"] = options.Kafka.BootstrapServers,
                ["KFlow:Kafka:CommitInterval"] = "00:00:00.200",
            }.Concat(options.Kafka.Properties.Select(kv =>
                new KeyValuePair<string, string?>($"KFlow:Kafka:Properties:{kv.Key}", kv.Value))));
            builder.Services.AddKFlow().AddWorkflow(Workflow.FromKafka(topic, "facade-hosted")
                .To("count", (_, _) =>
                {
                    Interlocked.Increment(ref count);
                    return Task.CompletedTask;
                }));
            using var host = builder.Build();
            await host.StartAsync();
            var running = host.Services.GetRequiredService<KFlowRuntime>().Find("facade-hosted");
            Expect.IsTrue(running is not null, "the runtime lists the started workflow");
            await Until(() => Volatile.Read(ref count) >= 100, "100 messages are sunk");
            await host.StopAsync();
            Expect.IsTrue(running!.Completion.IsCompletedSuccessfully, "the host's stop stopped the workflow");
            var offsets = Committed(topic, "facade-hosted");
            Expect.SequenceEqual(offsets.Take(4), offsets.Skip(4), "committed offsets = end offsets after the host stopped");
        }),
    }));
}
