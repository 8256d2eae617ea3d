// The demo service. `dotnet fsi build.fsx demo [--events N] [--keys K]`: with no bootstrap servers
// configured it starts an embedded Kafka cluster, with no PostgreSQL connection a throwaway server;
// it produces N sample events, runs the example workflow with live progress, stops it gracefully
// and checks that nothing was lost. With KFlow:Kafka:BootstrapServers set it runs until Ctrl+C/SIGTERM.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Linq;
using System.Text.Json;
using System.Threading;
using System.Threading.Tasks;
using Confluent.Kafka;
using KFlow.Hosting;
using KFlow.Testing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace KFlowDemo;

internal static class Program
{
    private const int Partitions = 8;

    private static async Task<int> Main(string[] argv)
    {
        var (events, keys, rest, usageError) = ParseArgs(argv);
        if (usageError is not null)
        {
            Console.Error.WriteLine(usageError);
            Console.Error.WriteLine("usage: KFlow.Demo [--events N] [--keys K] [--KFlow:Kafka:BootstrapServers=host:9092] " +
                                    "[--KFlow:Postgres:ConnectionString=...]");
            return 2;
        }

        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings
        {
            Args = rest,
            ContentRootPath = AppContext.BaseDirectory,
        });
        var configured = builder.Configuration.GetSection(KFlowOptions.SectionName).Get<KFlowOptions>() ?? new KFlowOptions();
        var embeddedKafka = string.IsNullOrWhiteSpace(configured.Kafka.BootstrapServers);
        var throwawayPostgres = string.IsNullOrWhiteSpace(configured.Postgres.ConnectionString);
        var total = events ?? (embeddedKafka ? 200_000 : 0);
        var keyCount = keys ?? Math.Clamp(total / 1000, 1, 10_000);

        var clock = Stopwatch.StartNew();
        await using var cluster = embeddedKafka ? EmbeddedKafka.Start(1) : null;
        await using var postgres = throwawayPostgres ? Postgres.Start() : null;
        var overrides = new Dictionary<string, string?>();
        if (cluster is not null)
        {
            cluster.CreateTopic(ExampleWorkflow.Topic, Partitions);
            overrides["KFlow:Kafka:BootstrapServers"] = cluster.BootstrapServers;
            // The embedded cluster's fast group settings (quick joins and failure detection).
            foreach (var (k, v) in FastClientSettings.Consumer.Where(kv => kv.Key != "auto.offset.reset"))
                overrides[$"KFlow:Kafka:Properties:{k}"] = v;
            overrides["KFlow:Kafka:CommitInterval"] = "00:00:00.500";
        }

        if (postgres is not null)
            overrides["KFlow:Postgres:ConnectionString"] = postgres.ConnectionString;
        builder.Configuration.AddInMemoryCollection(overrides);
        if (embeddedKafka)
        {
            builder.Logging.AddFilter("KFlow", LogLevel.Warning);
            builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        }

        var settings = builder.Configuration.GetSection(KFlowOptions.SectionName).Get<KFlowOptions>() ?? new KFlowOptions();
        var bootstrap = settings.Kafka.BootstrapServers!;
        var connection = settings.Postgres.ConnectionString!;
        Console.WriteLine($"KFlow demo: Kafka {(cluster is null ? bootstrap : "embedded (" + bootstrap + ")")}, " +
                          $"PostgreSQL {(postgres is null ? "configured" : "throwaway (port " + postgres.Port + ")")}, " +
                          $"{total:N0} events over {keyCount:N0} keys.");

        await using (var db = new NpgsqlConnection(connection))
        {
            await db.OpenAsync();
            await using var create = new NpgsqlCommand(ExampleWorkflow.CreateTable, db);
            await create.ExecuteNonQueryAsync();
        }

        var latest = total > 0 ? Produce(bootstrap, total, keyCount) : new Dictionary<string, Event>();
        if (total > 0)
            Console.WriteLine($"Produced {total:N0} events to {ExampleWorkflow.Topic} in {clock.Elapsed.TotalSeconds:F1} s.");

        builder.Services.AddKFlow().AddWorkflow(ExampleWorkflow.Build());
        using var host = builder.Build();
        var started = Stopwatch.StartNew();
        await host.StartAsync();
        var running = host.Services.GetRequiredService<KFlowRuntime>().Find(ExampleWorkflow.GroupId)!;
        var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();
        using var monitor = new Monitor(bootstrap, Partitions);
        var progress = new ProgressView(total, Console.IsOutputRedirected);

        // Embedded: run until every event was consumed. Configured: until Ctrl+C / SIGTERM.
        // After a failure (none expected) messages are read again, so "consumed ≥ N" alone is not
        // enough: wait until the commits reach the end offsets; and give up after 60 s without
        // progress, so a workflow stuck on a failing message still ends with the check.
        var lastConsumed = -1L;
        var stalledSince = started.Elapsed;
        while (!lifetime.ApplicationStopping.IsCancellationRequested && !running.Completion.IsCompleted)
        {
            var p = running.Progress;
            var committedNow = monitor.Committed();
            var endsNow = monitor.EndOffsets();
            progress.Show(p, committedNow, endsNow, started.Elapsed);
            if (p.Consumed != lastConsumed)
            {
                lastConsumed = p.Consumed;
                stalledSince = started.Elapsed;
            }

            if (embeddedKafka && p.Consumed >= total && (p.Failures == 0 || committedNow.Sum() >= endsNow.Sum())) break;
            if (embeddedKafka && started.Elapsed - stalledSince > TimeSpan.FromSeconds(60))
            {
                Console.WriteLine("No progress for 60 s (see the failures above); stopping.");
                break;
            }

            try
            {
                await Task.Delay(progress.Interval, lifetime.ApplicationStopping);
            }
            catch (OperationCanceledException)
            {
            }
        }

        await host.StopAsync(); // graceful: flush the batches, drain the writes, commit, leave the group
        var elapsed = started.Elapsed;
        var committed = monitor.Committed();
        var ends = monitor.EndOffsets();
        progress.Show(running.Progress, committed, ends, elapsed, final: true);
        Console.WriteLine($"Workflow stopped after {elapsed.TotalSeconds:F1} s " +
                          $"({running.Progress.Consumed / Math.Max(0.001, elapsed.TotalSeconds):N0} msg/s).");

        var rows = await CountRows(connection);
        var lost = total > 0 ? await Lost(connection, latest) : 0;
        var committedAtEnd = committed.Length == ends.Length && committed.Zip(ends).All(c => c.First == c.Second);
        Console.WriteLine(
            $"events={total} keys={latest.Count} rows={rows} committed_at_end={(committedAtEnd ? "true" : "false")} lost={lost}");
        return lost > 0 || running.Completion.IsFaulted ? 1 : 0;
    }

    private static (int? Events, int? Keys, string[] Others, string? Error) ParseArgs(string[] argv)
    {
        int? events = null, keys = null;
        var rest = new List<string>();
        for (var i = 0; i < argv.Length; i++)
        {
            if (argv[i] is "--events" or "--keys")
            {
                if (i + 1 >= argv.Length || !int.TryParse(argv[i + 1], NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) || n < 0)
                    return (null, null, [], $"{argv[i]} needs a number ≥ 0.");
                if (argv[i] == "--events") events = n;
                else keys = Math.Max(1, n);
                i++;
            }
            else
            {
                rest.Add(argv[i]);
            }
        }

        return (events, keys, rest.ToArray(), null);
    }

    /// <summary>Produces the sample events; returns each key's latest event (what my_table must hold).</summary>
    private static Dictionary<string, Event> Produce(string bootstrap, int total, int keyCount)
    {
        var config = new ProducerConfig { BootstrapServers = bootstrap, LingerMs = 5, BatchSize = 1_000_000, Acks = Acks.All };
        using var producer = new ProducerBuilder<string, byte[]>(config).Build();
        var latest = new Dictionary<string, Event>();
        var json = new JsonSerializerOptions(JsonSerializerDefaults.Web);
        var failed = 0;
        for (var i = 0; i < total; i++)
        {
            var e = new Event($"key-{i % keyCount}", i, $"bar-{i}", i * 0.5);
            latest[e.Key] = e;
            var message = new Message<string, byte[]> { Key = e.Key, Value = JsonSerializer.SerializeToUtf8Bytes(e, json) };
            while (true)
            {
                try
                {
                    producer.Produce(ExampleWorkflow.Topic, message, r =>
                    {
                        if (r.Error.IsError) Interlocked.Increment(ref failed);
                    });
                    break;
                }
                catch (ProduceException<string, byte[]> ex) when (ex.Error.Code == ErrorCode.Local_QueueFull)
                {
                    producer.Poll(TimeSpan.FromMilliseconds(50));
                }
            }
        }

        producer.Flush(TimeSpan.FromSeconds(60));
        if (failed > 0) throw new InvalidOperationException($"{failed} sample events could not be produced.");
        return latest;
    }

    private static async Task<long> CountRows(string connection)
    {
        await using var db = new NpgsqlConnection(connection);
        await db.OpenAsync();
        await using var count = new NpgsqlCommand("SELECT count(*) FROM my_table", db);
        return (long)(await count.ExecuteScalarAsync())!;
    }

    /// <summary>Keys whose latest event is not what my_table holds (missing or older values).</summary>
    private static async Task<int> Lost(string connection, Dictionary<string, Event> latest)
    {
        await using var db = new NpgsqlConnection(connection);
        await db.OpenAsync();
        await using var select = new NpgsqlCommand("SELECT key, foo, bar, baz FROM my_table", db);
        await using var reader = await select.ExecuteReaderAsync();
        var table = new Dictionary<string, Event>();
        while (await reader.ReadAsync())
            table[reader.GetString(0)] = new Event(reader.GetString(0), reader.GetInt64(1), reader.GetString(2), reader.GetDouble(3));
        return latest.Count(kv => !table.TryGetValue(kv.Key, out var row) || row != kv.Value);
    }
}
