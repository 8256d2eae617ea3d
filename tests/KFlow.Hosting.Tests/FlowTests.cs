// Tests of src-csharp/KFlow.Hosting/Flow.cs, Workflow.cs and WorkflowBuilder.cs: immutable building
// and the checks of Build().
using System;
using System.Threading.Tasks;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;

namespace KFlowHostingTests;

internal static class FlowTests
{
    private static readonly Func<object?, System.Threading.CancellationToken, Task> Ignore = (_, _) => Task.CompletedTask;

    public static readonly Test Tests = Runner.TestList("Flow", new[]
    {
        Runner.TestCase("a half-built flow can be forked: each branch keeps only its own stages", () =>
        {
            var shared = Workflow.FromKafka("orders", "billing").Map(m => m.Key);
            var a = shared.Filter(k => k.Length > 1).To("a", Ignore).Build();
            var b = shared.Demux(k => k).Aggregate(Batch.OfMessages(10)).To("b", Ignore).Build();
            Expect.IsTrue(!a.Describe().Contains("demux", StringComparison.OrdinalIgnoreCase), "branch a has no demux:\n" + a.Describe());
            Expect.IsTrue(b.Describe().Contains("demux", StringComparison.OrdinalIgnoreCase), "branch b has its demux:\n" + b.Describe());
            Expect.IsTrue(!b.Describe().Contains("filter", StringComparison.OrdinalIgnoreCase), "branch b has no filter:\n" + b.Describe());
        }),
        Runner.TestCase("with changes a copy and leaves the original", () =>
        {
            var flow = Workflow.FromKafka("orders", "billing");
            var other = flow with { Topic = "payments" };
            Expect.AreEqual(flow.Topic, "orders", "the original keeps its topic");
            Expect.AreEqual(other.Topic, "payments", "the copy has the new topic");
        }),
        Runner.TestCase("Build names the workflow after the group unless WithName names it", () =>
        {
            var builder = Workflow.FromKafka("orders", "billing").To("sink", Ignore);
            Expect.AreEqual(builder.Build().Name, "billing", "default name");
            Expect.AreEqual(builder.WithName("orders-to-db").Build().Name, "orders-to-db", "explicit name");
        }),
        Runner.TestCase("Build fails on an empty topic and names the setting", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("", "billing").To("sink", Ignore).Build(), "Build fails");
            Expect.Contains(e.Message, "topic must not be empty", "the message names the topic");
        }),
        Runner.TestCase("Build fails on an empty group and names the setting", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("orders", " ").To("sink", Ignore).Build(), "Build fails");
            Expect.Contains(e.Message, "groupId must not be empty", "the message names the group");
        }),
        Runner.TestCase("Build reports a Join without a Demux", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("orders", "billing").Join().To("sink", Ignore).Build(), "Build fails");
            Expect.Contains(e.Message, "split", "the core's message about the missing demux is passed on");
        }),
        Runner.TestCase("Build reports a MapAsync parallelism below 1", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("orders", "billing")
                .MapAsync((m, _) => Task.FromResult(m.Key), parallelism: 0).To("sink", Ignore).Build(), "Build fails");
            Expect.Contains(e.Message, "parallelism must be ≥ 1 (got 0)", "the message names the setting");
        }),
        Runner.TestCase("Build reports every problem at once", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("", "")
                .Aggregate(Batch.OfMessages(0)).To("", Ignore).Build(), "Build fails");
            foreach (var part in new[] { "topic", "groupId", "Batch.MaxMessages", "To: name" })
                Expect.Contains(e.Message, part, "each problem is listed");
        }),
        Runner.TestCase("Mfd, DemuxByKey, a scoped Demux, RouteDependent, AssembleChunks and Stateful show in the outline", () =>
        {
            var outline = Workflow.FromKafka("orders", "billing")
                .Mfd<long>(m => m.Value is null ? null : (m.Key, m.Offset))
                .Join()
                .DemuxByKey()
                .Stateful("pairs", 0L, (sum, v) => (sum + v, Array.Empty<long>()))
                .Join()
                .Demux(v => v.ToString(), s => s.Map(v => v + 1))
                .RouteDependent(v => v.ToString(), (_, s) => s.Filter(v => v > 0))
                .AssembleChunks(v => new Chunk<long>("o", 0, 1, v), parts => parts.Count)
                .To("sink", (_, _) => Task.CompletedTask)
                .Build()
                .Describe();
            foreach (var stage in new[] { "mfd", "pairs", "routeDependent", "assembleChunks", "map" })
                Expect.Contains(outline, stage, "the outline lists the stage");
        }),
        Runner.TestCase("Build reports a Stateful stage without a name", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("orders", "billing")
                .Stateful(" ", 0, (s, m) => (s, new[] { m })).To("sink", Ignore).Build(), "Build fails");
            Expect.Contains(e.Message, "Stateful: name must not be empty", "the message names the setting");
        }),
        Runner.TestCase("a null callback is refused at once", () =>
        {
            Expect.Throws<ArgumentNullException>(() => Workflow.FromKafka("orders", "billing").Map<string>(null!), "Map(null) throws");
        }),
    });
}
