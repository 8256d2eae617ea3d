// Tests of src-csharp/KFlow.Hosting/PostgresFlowExtensions.cs and PostgresTable.cs in exactly-once mode,
// on an embedded Kafka cluster and a throwaway PostgreSQL of their own: an insert-only table, where a
// message applied twice would show as a duplicate row.
using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Threading.Tasks;
using Confluent.Kafka;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;
using KFlow.Testing;
using Npgsql;

namespace KFlowHostingTests;

internal static class PostgresFlowExtensionsTests
{
    /// <summary>One row per message: where it came from and its body; no key, so rows are appended.</summary>
    public sealed record EventRow(string Key, int Partition, long SrcOffset, string Body);

    private const int Partitions = 4;

    private static void Produce(EmbeddedKafkaCluster cluster, string topic, int first, int count)
    {
        using var producer = new ProducerBuilder<string, string>(cluster.ProducerConfig()).Build();
        for (var i = first; i < first + count; i++)
            producer.Produce(topic, new Message<string, string> { Key = $"k{i % 10}", Value = $"event {i}" });
        producer.Flush(TimeSpan.FromSeconds(30));
    }

    /// <summary>(committed, end) offsets of every partition; an unset committed offset counts as 0.</summary>
    private static (long[] Committed, long[] Ends) Offsets(EmbeddedKafkaCluster cluster, string topic, string group)
    {
        using var consumer = new ConsumerBuilder<byte[], byte[]>(cluster.ConsumerConfig(group)).Build();
        var partitions = Enumerable.Range(0, Partitions).Select(p => new TopicPartition(topic, p)).ToList();
        var committed = consumer.Committed(partitions, TimeSpan.FromSeconds(10)).Select(c => Math.Max(0, c.Offset.Value));
        var ends = partitions.Select(tp => consumer.QueryWatermarkOffsets(tp, TimeSpan.FromSeconds(10)).High.Value);
        return (committed.ToArray(), ends.ToArray());
    }

    private static long Scalar(string connection, string sql)
    {
        using var c = new NpgsqlConnection(connection);
        c.Open();
        using var command = new NpgsqlCommand(sql, c);
        return Convert.ToInt64(command.ExecuteScalar());
    }

    private static KFlowOptions Options(EmbeddedKafkaCluster cluster, TimeSpan commitInterval) => new()
    {
        Kafka = new KafkaSettings
        {
            BootstrapServers = cluster.BootstrapServers,
            Properties = FastClientSettings.Consumer.Where(kv => kv.Key != "auto.offset.reset")
                .ToDictionary(kv => kv.Key, kv => kv.Value),
            CommitInterval = commitInterval,
            DrainTimeout = TimeSpan.FromSeconds(2),
        },
    };

    public static readonly Test Tests = Runner.TestSequenced(Runner.TestList("PostgresFlowExtensions", new[]
    {
        Runner.TestCase("ToPostgres in exactly-once mode applies each message once although the second run reads again from Kafka's older committed offsets", async () =>
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            using var cluster = EmbeddedKafka.Start(1);
            using var server = Postgres.Start();
            const string topic = "exactly-once-facade", group = "exactly-once-facade";
            cluster.CreateTopic(topic, Partitions);
            var suffix = Guid.NewGuid().ToString("N")[..8];
            var table = "events_" + suffix;
            var offsetsTable = "applied_" + suffix;
            using (var c = new NpgsqlConnection(server.ConnectionString))
            {
                c.Open();
                using var create = new NpgsqlCommand(
                    $"CREATE TABLE {table} (key text NOT NULL, partition int NOT NULL, src_offset bigint NOT NULL, body text)", c);
                create.ExecuteNonQuery();
            }

            //[exactly-once]
            var workflow = Workflow.FromKafka(topic, group)
                .Map(m => new EventRow(m.Key, m.Partition, m.Offset, Encoding.UTF8.GetString(m.Value!)))
                .Demux(e => e.Key)
                .Aggregate(Batch.OfMessages(20).WithMaxAge(TimeSpan.FromSeconds(1)))
                .ToPostgres(PostgresTable.Named(table) // no key: rows are appended
                    .WithExactlyOnce(offsetsTable) // each batch records its offsets with its rows
                    .WithConnectionString(server.ConnectionString))
                .Build();
            //[/exactly-once]
            var rows = $"SELECT count(*) FROM {table}";

            // Run 1: the Kafka commits are refused, as if the process died after each database commit.
            Produce(cluster, topic, 0, 500);
            cluster.PushRequestErrors(KafkaApiKey.OffsetCommit, Enumerable.Repeat(ErrorCode.RequestTimedOut, 1000).ToArray());
            var first = await workflow.StartAsync(Options(cluster, TimeSpan.FromHours(1)));
            await WorkflowTests.Until(() => Scalar(server.ConnectionString, rows) >= 500, "run 1 wrote the first 500 messages");
            var written1 = clock.Elapsed;
            await first.StopAsync();
            var stopped1 = clock.Elapsed;
            cluster.ClearRequestErrors(KafkaApiKey.OffsetCommit);
            var (committed1, ends1) = Offsets(cluster, topic, group);
            Expect.IsTrue(committed1.Sum() < ends1.Sum(),
                $"after run 1 Kafka's committed offsets ({string.Join(",", committed1)}) are behind the table (ends {string.Join(",", ends1)}): a plain sink would write messages again");

            // Run 2 starts from those committed offsets, over the same input and 500 more messages.
            Produce(cluster, topic, 500, 500);
            var second = await workflow.StartAsync(Options(cluster, TimeSpan.FromMilliseconds(200)));
            await WorkflowTests.Until(() => Scalar(server.ConnectionString, rows) >= 1000, "run 2 wrote the next 500 messages");
            await WorkflowTests.Until(() =>
            {
                var (committed, ends) = Offsets(cluster, topic, group);
                return committed.SequenceEqual(ends);
            }, "run 2 committed the end offsets");
            await second.StopAsync();
            Expect.IsTrue(second.Completion.IsCompletedSuccessfully, "run 2 stopped without failure");

            Expect.AreEqual(Scalar(server.ConnectionString, rows), 1000L, "1,000 rows for 1,000 messages");
            Expect.AreEqual(Scalar(server.ConnectionString, $"SELECT count(DISTINCT (partition, src_offset)) FROM {table}"), 1000L,
                "each message once");
            Expect.AreEqual(Scalar(server.ConnectionString, $"SELECT count(DISTINCT body) FROM {table}"), 1000L,
                "every message's body once");
            var (committed2, ends2) = Offsets(cluster, topic, group);
            Expect.SequenceEqual(committed2, ends2, "committed offsets = end offsets after run 2");
            Console.WriteLine($"exactly-once facade: run 1 wrote 500 rows at {written1.TotalSeconds:F1} s, stopped at " +
                              $"{stopped1.TotalSeconds:F1} s with {committed1.Sum()} offsets committed; run 2 read " +
                              $"{second.Progress.Consumed} messages, 1,000 rows at {clock.Elapsed.TotalSeconds:F1} s");
        }),
        Runner.TestCase("a table without keys is refused unless in exactly-once mode, and the offsets table needs that mode", () =>
        {
            var flow = Workflow.FromKafka("t", "g")
                .Map(m => new EventRow(m.Key, m.Partition, m.Offset, ""))
                .Aggregate(Batch.OfMessages(10));
            flow.ToPostgres(PostgresTable.Named("events").WithExactlyOnce()).Build();
            var e = Expect.Throws<ArgumentException>(() => flow.ToPostgres(PostgresTable.Named("events")).Build(), "no key, upsert mode");
            Expect.Contains(e.Message, "PostgresTable.WithExactlyOnce()", "the message names the mode");
            var offsets = Expect.Throws<ArgumentException>(
                () => flow.ToPostgres(PostgresTable.Named("events", "key") with { OffsetsTable = "applied" }).Build(),
                "an offsets table without exactly-once mode");
            Expect.Contains(offsets.Message, "WithExactlyOnce(offsetsTable)", "the message says what to use");
        }),
        Runner.TestCase("WithStatements returns a new table with the setting (default 2), and less than 1 is refused at Build", () =>
        {
            var table = PostgresTable.Named("events", "key");
            var wider = table.WithStatements(4);
            Expect.AreEqual(table.Statements, 2, "the default is 2 statements at once");
            Expect.AreEqual(wider.Statements, 4, "the new table has the setting");
            var flow = Workflow.FromKafka("t", "g")
                .Map(m => new EventRow(m.Key, m.Partition, m.Offset, ""))
                .Aggregate(Batch.OfMessages(10));
            flow.ToPostgres(wider).Build();
            var e = Expect.Throws<ArgumentException>(() => flow.ToPostgres(table.WithStatements(0)).Build(), "0 statements");
            Expect.Contains(e.Message, "Statements", "the message names the setting");
        }),
        Runner.TestCase("WithStatementRows returns a new table with the setting (default 16,384), and less than 1 is refused at Build", () =>
        {
            var table = PostgresTable.Named("events", "key");
            var smaller = table.WithStatementRows(1000);
            Expect.AreEqual(table.StatementRows, 16384, "the default is 16,384 rows per statement");
            Expect.AreEqual(smaller.StatementRows, 1000, "the new table has the setting");
            var flow = Workflow.FromKafka("t", "g")
                .Map(m => new EventRow(m.Key, m.Partition, m.Offset, ""))
                .Aggregate(Batch.OfMessages(10));
            flow.ToPostgres(smaller).Build();
            var e = Expect.Throws<ArgumentException>(() => flow.ToPostgres(table.WithStatementRows(0)).Build(), "0 rows");
            Expect.Contains(e.Message, "StatementRows", "the message names the setting");
        }),
        Runner.TestCase("WithPipelining returns a new table with the setting (default 32), and less than 1 is refused at Build", () =>
        {
            var table = PostgresTable.Named("events", "key");
            var pipelined = table.WithPipelining(8);
            Expect.AreEqual(table.Pipelining, 32, "the default is 32 batches in flight");
            Expect.AreEqual(pipelined.Pipelining, 8, "the new table has the setting");
            Expect.AreEqual(table.WithPipelining(1).Pipelining, 1, "1 writes one batch at a time");
            var flow = Workflow.FromKafka("t", "g")
                .Map(m => new EventRow(m.Key, m.Partition, m.Offset, ""))
                .Aggregate(Batch.OfMessages(10));
            flow.ToPostgres(pipelined).Build();
            var e = Expect.Throws<ArgumentException>(() => flow.ToPostgres(table.WithPipelining(0)).Build(), "0 in flight");
            Expect.Contains(e.Message, "Pipelining", "the message names the setting");
        }),
    }));
}
