// Tests of src-csharp/KFlow.Hosting/KFlowWorkflow.cs and RunningWorkflow.cs on the embedded Kafka
// cluster: every stage and failure policy of the facade runs on the real runtime, directly and as a
// hosted service.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Collections.Immutable;
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

    internal static void Produce(string topic, IEnumerable<(string Key, string Value)> messages)
    {
        Cluster.Value.CreateTopic(topic, 4);
        using var producer = new ProducerBuilder<string, string>(Cluster.Value.ProducerConfig()).Build();
        foreach (var (key, value) in messages)
            producer.Produce(topic, new Message<string, string> { Key = key, Value = value });
        producer.Flush(TimeSpan.FromSeconds(30));
    }

    internal static List<(string Key, string Value)> Read(string topic, int count)
    {
        using var reader = new ConsumerBuilder<string, string>(Cluster.Value.ConsumerConfig(topic + "-reader")).Build();
        reader.Subscribe(topic);
        var read = new List<(string Key, string Value)>();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (read.Count < count && DateTime.UtcNow < deadline)
            if (reader.Consume(TimeSpan.FromMilliseconds(200)) is { } r) read.Add((r.Message.Key, r.Message.Value));
        reader.Close();
        return read;
    }

    private static int Number(KafkaMessage m) => int.Parse(Encoding.UTF8.GetString(m.Value!));

    private static Func<IReadOnlyList<T>, CancellationToken, Task> Into<T>(ConcurrentBag<T> bag) => (batch, _) =>
    {
        foreach (var v in batch) bag.Add(v);
        return Task.CompletedTask;
    };

    internal static long[] Committed(string topic, string group)
    {
        using var consumer = new ConsumerBuilder<byte[], byte[]>(Cluster.Value.ConsumerConfig(group)).Build();
        var partitions = Enumerable.Range(0, 4).Select(p => new TopicPartition(topic, p)).ToList();
        var committed = consumer.Committed(partitions, TimeSpan.FromSeconds(10));
        var ends = partitions.Select(tp => consumer.QueryWatermarkOffsets(tp, TimeSpan.FromSeconds(10)).High.Value);
        // A partition without a commit (no message ever) reports Offset.Unset (-1001): count it as 0.
        return committed.Select(c => Math.Max(0, c.Offset.Value)).Concat(ends).ToArray();
    }

    /// <summary>Fails with <paramref name="message"/> unless the group's committed offsets of the topic's
    /// 4 partitions are their end offsets.</summary>
    private static void ExpectCommittedAtEnd(string topic, string group, string message)
    {
        var offsets = Committed(topic, group);
        Expect.SequenceEqual(offsets.Take(4), offsets.Skip(4), message);
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
            ExpectCommittedAtEnd(topic, "facade-stages", "committed offsets = end offsets after the stop");
        }),
        Runner.TestCase("Kafka:MaxConcurrentCalls caps the async calls running at once over every partition and key, and the cap is reached", async () =>
        {
            const string topic = "facade-call-cap";
            Produce(topic, 400, 40);
            var now = 0;
            var peak = 0;
            var written = new ConcurrentBag<int>();
            var workflow = Workflow.FromKafka(topic, "facade-call-cap")
                .Map(m => (m.Key, Value: Number(m)))
                .Demux(e => e.Key)
                .MapAsync(async (e, _) =>
                {
                    var inCall = Interlocked.Increment(ref now);
                    int seen;
                    while (inCall > (seen = Volatile.Read(ref peak)) && Interlocked.CompareExchange(ref peak, inCall, seen) != seen) { }
                    await Task.Delay(2);
                    Interlocked.Decrement(ref now);
                    return e.Value;
                })
                .To("collect", (v, _) =>
                {
                    written.Add(v);
                    return Task.CompletedTask;
                })
                .Build();
            var options = Options();
            options.Kafka.MaxConcurrentCalls = 2;
            var running = await workflow.StartAsync(options);
            await Until(() => written.Count >= 400, "all 400 values are written");
            await running.StopAsync();
            Expect.IsTrue(running.Completion.IsCompletedSuccessfully, "the workflow stopped without failure");
            Expect.SequenceEqual(written.OrderBy(v => v), Enumerable.Range(0, 400), "every value is written once");
            Expect.IsTrue(peak <= 2, $"at most 2 calls at once (saw {peak})");
            Expect.AreEqual(peak, 2, "the cap is reached");
        }),
        Runner.TestCase("Mfd, DemuxByKey and a value-holding Stateful stage run on Kafka and commit every offset", async () =>
        {
            const string topic = "facade-mfd";
            Produce(topic, 400, 8);
            var written = new ConcurrentBag<(string Key, int Sum, int Count)>();
            var running = await Workflow.FromKafka(topic, "facade-mfd")
                .Mfd<int>(m => Number(m) % 2 == 0 ? ("r" + Number(m) % 3, Number(m)) : null)
                .Join()
                .DemuxByKey()
                .Map(v => (Key: "r" + v % 3, Value: v))
                .Stateful("pairs", ImmutableList<int>.Empty,
                    (held, e) => held.Count == 1
                        ? (ImmutableList<int>.Empty, new[] { (e.Key, held[0] + e.Value, 2) })
                        : (held.Add(e.Value), Array.Empty<(string, int, int)>()),
                    flush: held => held.IsEmpty ? Array.Empty<(string, int, int)>() : new[] { ("flushed", held.Sum(), held.Count) })
                .Aggregate(Batch.OfMessages(5).WithMaxAge(TimeSpan.FromMilliseconds(200)))
                .To("collect", Into(written))
                .Build()
                .StartAsync(Options());
            await Until(() => running.Progress.Consumed >= 400, "all 400 messages are consumed");
            await running.StopAsync();
            Expect.IsTrue(running.Completion.IsCompletedSuccessfully, "the workflow stopped without failure");
            Expect.AreEqual(written.Sum(e => e.Sum), Enumerable.Range(0, 200).Sum(i => 2 * i), "every even value is summed once, the odd ones dropped");
            Expect.AreEqual(written.Sum(e => e.Count), 200, "the pairs and the flushed rest hold the 200 even values");
            Expect.IsTrue(written.Where(e => e.Key != "flushed").All(e => e.Count == 2), "the stage emits pairs");
            Expect.IsTrue(written.Where(e => e.Key != "flushed").All(e => e.Key.StartsWith('r')),
                "DemuxByKey after Mfd splits by the key Mfd set");
            ExpectCommittedAtEnd(topic, "facade-mfd", "committed offsets = end offsets after the stop");
        }),
        Runner.TestCase("RouteDependent gives each key its own stages and a scoped Demux joins its substreams", async () =>
        {
            const string topic = "facade-route";
            Produce(topic, 200, 4);
            var written = new ConcurrentBag<(string Key, int Value)>();
            var routes = new ConcurrentBag<string>();
            var running = await Workflow.FromKafka(topic, "facade-route")
                .Map(m => (m.Key, Value: Number(m)))
                .RouteDependent(e => e.Key, (key, perKey) =>
                {
                    routes.Add(key);
                    return key == "k0" ? perKey.Map(e => (e.Key, Value: e.Value * 10)) : perKey.Filter(e => e.Value % 2 == 0);
                })
                .Demux(e => e.Key, perKey => perKey.Map(e => (e.Key, Value: e.Value + 1)))
                .Aggregate(Batch.OfMessages(10).WithMaxAge(TimeSpan.FromMilliseconds(200)))
                .To("collect", Into(written))
                .Build()
                .StartAsync(Options());
            await Until(() => running.Progress.Consumed >= 200, "all 200 messages are consumed");
            await running.StopAsync();
            var expected = Enumerable.Range(0, 200)
                .Where(i => i % 4 == 0 || i % 2 == 0)
                .Select(i => i % 4 == 0 ? i * 10 + 1 : i + 1)
                .OrderBy(v => v);
            Expect.SequenceEqual(written.Select(e => e.Value).OrderBy(v => v), expected,
                "k0 is multiplied, the other keys filtered, then every value incremented");
            Expect.SequenceEqual(routes.Distinct().OrderBy(k => k, StringComparer.Ordinal), new[] { "k0", "k1", "k2", "k3" },
                "the route is built for each key");
            ExpectCommittedAtEnd(topic, "facade-route", "committed offsets = end offsets after the stop");
        }),
        Runner.TestCase("AssembleChunks emits each object once all its chunks arrived, in index order", async () =>
        {
            const string topic = "facade-chunks";
            // 20 objects of 3 chunks, the chunks of different objects interleaved, index order shuffled.
            var chunks = Enumerable.Range(0, 3).SelectMany(round => Enumerable.Range(0, 20).Select(o =>
                (Key: "o" + o, Value: $"{(round + o) % 3}:part{(round + o) % 3}")));
            Produce(topic, chunks);
            var written = new ConcurrentBag<(string Id, string Text)>();
            var running = await Workflow.FromKafka(topic, "facade-chunks")
                .AssembleChunks(m =>
                {
                    var text = Encoding.UTF8.GetString(m.Value!).Split(':');
                    return new Chunk<(string, string)>(m.Key, int.Parse(text[0]), 3, (m.Key, text[1]));
                }, parts => (parts[0].Item1, string.Join("+", parts.Select(p => p.Item2))))
                .Aggregate(Batch.OfMessages(5).WithMaxAge(TimeSpan.FromMilliseconds(200)))
                .To("collect", Into(written))
                .Build()
                .StartAsync(Options());
            await Until(() => written.Count >= 20, "20 objects are assembled");
            await running.StopAsync();
            Expect.AreEqual(written.Count, 20, "each object is emitted once");
            Expect.IsTrue(written.All(o => o.Text == "part0+part1+part2"), "the parts are combined in index order");
            ExpectCommittedAtEnd(topic, "facade-chunks", "every chunk's offset is committed");
        }),
        Runner.TestCase("a stage's dead-letter policy sends its failing messages to the dead-letter topic and the stream moves on", async () =>
        {
            const string topic = "facade-dlq-in";
            Produce(topic, 100, 4);
            var written = new ConcurrentBag<int>();
            var running = await Workflow.FromKafka(topic, "facade-dlq")
                .Map(m => Number(m) % 25 == 7 ? throw new InvalidOperationException("bad " + Number(m)) : Number(m))
                .Aggregate(Batch.OfMessages(10).WithMaxAge(TimeSpan.FromMilliseconds(200)))
                .To("collect", Into(written))
                .OnFailure("map", FailurePolicy.RetryInPlace(1, FailurePolicy.DeadLetter("facade-dlq-out")))
                .Build()
                .StartAsync(Options());
            await Until(() => written.Count >= 96, "the 96 good values are written");
            var dead = Read("facade-dlq-out", 4);
            await running.StopAsync();
            Expect.SequenceEqual(dead.Select(d => int.Parse(d.Value)).OrderBy(v => v), new[] { 7, 32, 57, 82 },
                "the failing messages are dead-lettered, each once");
            Expect.SequenceEqual(written.OrderBy(v => v), Enumerable.Range(0, 100).Where(i => i % 25 != 7),
                "the others are written");
            Expect.AreEqual(running.Progress.Restarts, 0L, "dead-lettering does not restart the workflow");
            ExpectCommittedAtEnd(topic, "facade-dlq", "committed offsets = end offsets, the dead-lettered included");
        }),
        Runner.TestCase("the workflow's Halt policy stops it on the first failure and Completion names the stage", async () =>
        {
            const string topic = "facade-halt";
            Produce(topic, 20, 4);
            var running = await Workflow.FromKafka(topic, "facade-halt")
                .Filter(m => Number(m) == 13 ? throw new InvalidOperationException("thirteen") : true)
                .To("nothing", (_, _) => Task.CompletedTask)
                .OnFailure(FailurePolicy.Halt)
                .Build()
                .StartAsync(Options());
            await Until(() => running.Completion.IsCompleted, "the workflow halts");
            Expect.IsTrue(running.Completion.IsFaulted, "Completion faults");
            var error = running.Completion.Exception!.GetBaseException();
            Expect.Contains(error.Message, "filter", "the failure names the stage");
            Expect.AreEqual(running.Progress.Restarts, 0L, "a halted workflow does not restart");
            await running.StopAsync();
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
            var read = Read("facade-kafka-out", 100);
            Expect.SequenceEqual(read.Select(r => r.Value).OrderBy(v => v, StringComparer.Ordinal),
                Enumerable.Range(0, 100).Select(i => "v" + i).OrderBy(v => v, StringComparer.Ordinal), "every value was written once");
            Expect.IsTrue(read.All(r => r.Key == "k" + (int.Parse(r.Value[1..]) % 5)),
                "each message keeps its input's key");
            ExpectCommittedAtEnd(topic, "facade-kafka", "the input's committed offsets = its end offsets");
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
            ExpectCommittedAtEnd(topic, "facade-hosted", "committed offsets = end offsets after the host stopped");
        }),
    }));
}
