// The examples of docs/csharp-guide.md, docs/operations.md and docs/demo.md, compiled here (and the demo's workflow in
// src-csharp/KFlow.Demo/ExampleWorkflow.cs). Each snippet sits between `//[name]` and `//[/name]`;
// the tests check that every ```csharp snippet of the pages is exactly such a region.
using System;
using System.Collections.Generic;
using System.Diagnostics.Metrics;
using System.ComponentModel.DataAnnotations.Schema;
using System.IO;
using System.Linq;
using System.Net.Http;
using System.Text.Json;
using System.Threading;
using System.Threading.Tasks;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace KFlowHostingTests;

internal static class CSharpGuideTests
{
    //[order-types]
    public sealed record Order(string Id, string CustomerId, decimal Amount, string Status);

    public sealed record OrderRow(
        string CustomerId,
        [property: Column("last_order")] string LastOrderId,
        decimal Amount,
        [property: NotMapped] string Comment);
    //[/order-types]

    internal static async Task HostMain(string[] args)
    {
        //[hosting]
        var builder = Host.CreateApplicationBuilder(args);
        builder.Services
            .AddKFlow() // binds the "KFlow" section: appsettings.json, KFlow__Kafka__BootstrapServers, --KFlow:...
            .AddWorkflow(Workflow.FromKafka<Order>("orders", "orders-to-db")
                .Filter(m => m.Value is not null)
                .Map(m => new OrderRow(m.Value!.CustomerId, m.Value.Id, m.Value.Amount, ""))
                .Demux(row => row.CustomerId)
                .Aggregate(Batch.OfMessages(100).WithMaxAge(TimeSpan.FromSeconds(1)))
                .ToPostgres("customer_orders", "customer_id"));
        await builder.Build().RunAsync(); // Ctrl+C / SIGTERM: flush, drain, commit, leave the group
        //[/hosting]
    }

    internal static WorkflowBuilder Stages(HttpClient http)
    {
        //[stages]
        var pipeline = Workflow.FromKafka<Order>("orders", "order-enricher")
            .Filter(m => m.Value is { Status: not "test" })
            .Unfold(m => m.Value!.Amount > 1000 ? new[] { m.Value, m.Value with { Status = "review" } } : new[] { m.Value })
            .MapAsync(async (order, ct) =>
            {
                var country = await http.GetStringAsync($"/customers/{order!.CustomerId}/country", ct);
                return (Order: order, Country: country);
            }, parallelism: 8)
            .Demux(x => x.Order.CustomerId)
            .Scan("running-total", 0m, (total, x) =>
            {
                var next = total + x.Order.Amount;
                return (next, new[] { (x.Order.CustomerId, x.Country, Total: next) });
            })
            .Aggregate(Batch.OfMessages(500));
        return pipeline.To("audit-log", async (batch, ct) => await File.AppendAllLinesAsync(
            "audit.log", batch.Select(t => $"{t.CustomerId} {t.Country} {t.Total}"), ct));
        //[/stages]
    }

    internal static WorkflowBuilder MoreStages()
    {
        //[more-stages]
        var pipeline = Workflow.FromKafka<Order>("orders", "order-stats")
            // Map + filter + demux in one step: null drops the message, (key, value) routes it.
            .Mfd<Order>(m => m.Value is { Status: "test" } or null ? null : (m.Value.CustomerId, m.Value))
            // Each key's stages are built on its first message: big customers get their own rule.
            .RouteDependent(o => o.CustomerId, (customer, perKey) => customer.StartsWith("vip-", StringComparison.Ordinal)
                ? perKey.Map(o => o with { Status = "priority" })
                : perKey.Filter(o => o.Amount > 0))
            // A stage holding values in its state (per key): one (customer, total) per 10 orders; a
            // revoke or stop emits the partial total. The orders' offsets finish with the total.
            .Stateful("totals-of-10", (Count: 0, Total: 0m, Customer: ""), (s, o) => s.Count == 9
                ? ((0, 0m, ""), new[] { (o.CustomerId, Total: s.Total + o.Amount) })
                : ((s.Count + 1, s.Total + o.Amount, o.CustomerId), Array.Empty<(string, decimal)>()),
                flush: s => s.Count == 0 ? [] : new[] { (s.Customer, s.Total) })
            .Join()
            .Aggregate(Batch.OfMessages(100).WithMaxAge(TimeSpan.FromSeconds(1)));
        return pipeline.To("totals", (batch, ct) => Task.CompletedTask);
        //[/more-stages]
    }

    internal static WorkflowBuilder Chunks()
    {
        //[chunks]
        // Documents split into chunks ("id", "3/5", bytes), keyed by document id: one output per document.
        return Workflow.FromKafka("document-chunks", "documents")
            .AssembleChunks(m =>
            {
                var header = m.Key.Split('/'); // key "doc-17/3/5": document, index, count
                return new Chunk<byte[]>(header[0], int.Parse(header[1]), int.Parse(header[2]), m.Value ?? []);
            }, parts => parts.SelectMany(p => p).ToArray())
            .To("documents", (document, ct) => File.WriteAllBytesAsync($"doc-{document.Length}.bin", document, ct));
        //[/chunks]
    }

    internal static KFlowWorkflow Policies(WorkflowBuilder pipeline)
    {
        //[failure-policies]
        return pipeline
            // Any stage: restart from the committed offsets, 2 s doubling to 1 min (the default is 1 s to 30 s).
            .OnFailure(FailurePolicy.RestartAndReplay(TimeSpan.FromSeconds(2), TimeSpan.FromMinutes(1)))
            // Bad input in "map": straight to a dead-letter topic, the stream moves on.
            .OnFailure("map", FailurePolicy.DeadLetter("orders-dlq"))
            // The sink: 5 retries in place (100 ms doubling to 5 s), then dead-letter.
            .OnFailure("postgres:customer_orders", FailurePolicy.RetryInPlace(5, FailurePolicy.DeadLetter("orders-dlq")))
            .Build();
        //[/failure-policies]
    }

    internal static MeterListener Metrics()
    {
        //[metrics-listener]
        // Without OpenTelemetry: print every KFlow measurement (an exporter does the same by meter name).
        var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == KFlowMeter.MeterName) l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            Console.WriteLine($"{instrument.Name} {value} {string.Join(",", tags.ToArray())}"));
        listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) => // kflow.stage.duration
            Console.WriteLine($"{instrument.Name} {value:F3} ms {string.Join(",", tags.ToArray())}"));
        listener.Start();
        // Observable instruments report when collected: an exporter collects every interval.
        listener.RecordObservableInstruments();
        //[/metrics-listener]
        return listener;
    }

    internal static async Task Direct(string bootstrap, string connection, CancellationToken shutdown)
    {
        //[direct]
        var workflow = Workflow.FromKafka<Order>("orders", "orders-to-db")
            .Map(m => new OrderRow(m.Value!.CustomerId, m.Value.Id, m.Value.Amount, ""))
            .Aggregate(Batch.OfMessages(100))
            .ToPostgres(PostgresTable.Named("customer_orders", "customer_id").WithConnectionString(connection))
            .Build();

        var options = new KFlowOptions { Kafka = { BootstrapServers = bootstrap, MaxInFlightMessages = 10_000 } };
        await using var running = await workflow.StartAsync(options);
        await Task.Delay(Timeout.Infinite, shutdown).ContinueWith(_ => { });
        Console.WriteLine(running.Progress); // Consumed, InFlight, Written, ...
        //[/direct]
    }

    private static string Root()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "KFlow.Functional.sln"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("KFlow.Functional.sln not found above " + AppContext.BaseDirectory);
    }

    /// <summary>The ```csharp snippets of a page: `&lt;!-- snippet: name --&gt;` right above the fence.</summary>
    private static List<(string Name, string Body)> Snippets(string markdown)
    {
        var lines = markdown.Replace("\r\n", "\n").Split('\n');
        var found = new List<(string, string)>();
        for (var i = 0; i < lines.Length - 1; i++)
        {
            var line = lines[i].Trim();
            if (!line.StartsWith("<!-- snippet:", StringComparison.Ordinal) || lines[i + 1].Trim() != "```csharp") continue;
            var name = line[13..].Replace("-->", "").Trim();
            found.Add((name, string.Join("\n", lines.Skip(i + 2).TakeWhile(l => l.Trim() != "```"))));
        }

        return found;
    }

    /// <summary>The marked regions of a source file, dedented.</summary>
    private static Dictionary<string, string> Regions(string source)
    {
        var lines = source.Replace("\r\n", "\n").Split('\n');
        var found = new Dictionary<string, string>();
        for (var i = 0; i < lines.Length; i++)
        {
            var line = lines[i].Trim();
            if (!line.StartsWith("//[", StringComparison.Ordinal) || line.StartsWith("//[/", StringComparison.Ordinal) || !line.EndsWith(']')) continue;
            var name = line[3..^1];
            var body = lines.Skip(i + 1).TakeWhile(l => !l.Trim().StartsWith("//[/" + name + "]", StringComparison.Ordinal)).ToList();
            var indent = body.Where(l => l.Trim().Length > 0).Select(l => l.Length - l.TrimStart().Length).DefaultIfEmpty(0).Min();
            found[name] = string.Join("\n", body.Select(l => l.Length >= indent ? l[indent..] : l.TrimStart()));
        }

        return found;
    }

    private static Dictionary<string, string> AllRegions()
    {
        var root = Root();
        return new[]
            {
                Path.Combine(root, "tests", "KFlow.Hosting.Tests", "CSharpGuideTests.cs"),
                Path.Combine(root, "src-csharp", "KFlow.Demo", "ExampleWorkflow.cs"),
                Path.Combine(root, "tests", "KFlow.Hosting.Tests", "PostgresFlowExtensionsTests.cs"),
            }
            .SelectMany(f => Regions(File.ReadAllText(f)))
            .ToDictionary(kv => kv.Key, kv => kv.Value);
    }

    private static void PageMatches(string page)
    {
        var regions = AllRegions();
        var snippets = Snippets(File.ReadAllText(Path.Combine(Root(), page)));
        Expect.IsTrue(snippets.Count > 0, $"{page} has snippets");
        foreach (var (name, body) in snippets)
        {
            Expect.IsTrue(regions.ContainsKey(name), $"{page}: snippet '{name}' has a compiled region");
            Expect.AreEqual(body, regions[name], $"{page}: snippet '{name}' is the compiled code");
        }
    }

    public static readonly Test Tests = Runner.TestList("CSharpGuide", new[]
    {
        Runner.TestCase("every snippet of docs/csharp-guide.md is compiled code", () => PageMatches(Path.Combine("docs", "csharp-guide.md"))),
        Runner.TestCase("every snippet of docs/demo.md is compiled code", () => PageMatches(Path.Combine("docs", "demo.md"))),
        Runner.TestCase("every C# snippet of README.md is compiled code", () => PageMatches("README.md")),
        Runner.TestCase("every snippet of docs/operations.md is compiled code", () => PageMatches(Path.Combine("docs", "operations.md"))),
        Runner.TestCase("every compiled region of the guide appears in docs/csharp-guide.md", () =>
        {
            var guide = Snippets(File.ReadAllText(Path.Combine(Root(), "docs", "csharp-guide.md"))).Select(s => s.Name).ToHashSet();
            foreach (var name in Regions(File.ReadAllText(Path.Combine(Root(), "tests", "KFlow.Hosting.Tests", "CSharpGuideTests.cs"))).Keys)
                Expect.IsTrue(guide.Contains(name), $"region '{name}' is shown in docs/csharp-guide.md");
        }),
        Runner.TestCase("the guide's examples of more stages, chunks and failure policies build", () =>
        {
            var outline = MoreStages().Build().Describe();
            foreach (var part in new[] { "mfd", "routeDependent", "totals-of-10" })
                Expect.Contains(outline, part, "the outline lists the stage");
            Expect.Contains(Chunks().Build().Describe(), "assembleChunks", "the chunks example builds");
            var policies = Policies(Workflow.FromKafka("orders", "p").To("s", (_, _) => Task.CompletedTask));
            Expect.AreEqual(policies.StagePolicies.Count, 2, "two stage policies");
            using var listener = Metrics();
        }),
        Runner.TestCase("the guide's stage example builds", () =>
        {
            using var http = new HttpClient();
            var workflow = Stages(http).Build();
            foreach (var part in new[] { "filter", "demux" })
                Expect.Contains(workflow.Describe().ToLowerInvariant(), part, "the outline lists the stage");
        }),
    });
}
