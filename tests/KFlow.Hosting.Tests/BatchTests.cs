// Tests of src-csharp/KFlow.Hosting/Batch.cs: the aggregation limits.
using System;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;

namespace KFlowHostingTests;

internal static class BatchTests
{
    public static readonly Test Tests = Runner.TestList("Batch", new[]
    {
        Runner.TestCase("OfMessages and WithMaxAge set both limits without changing the original", () =>
        {
            var count = Batch.OfMessages(100);
            var both = count.WithMaxAge(TimeSpan.FromSeconds(2));
            Expect.AreEqual(count.MaxAge, null, "the original keeps no age limit");
            Expect.AreEqual(both.MaxMessages, 100, "the count limit is kept");
            Expect.AreEqual(both.MaxAge, TimeSpan.FromSeconds(2), "the age limit is set");
        }),
        Runner.TestCase("a batch without a limit is reported at Build", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("t", "g")
                .Aggregate(new Batch()).To("sink", (_, _) => System.Threading.Tasks.Task.CompletedTask).Build(), "Build fails");
            Expect.Contains(e.Message, "Batch.OfMessages", "the message says how to set a limit");
        }),
        Runner.TestCase("a count below 1 is reported at Build with the value", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("t", "g")
                .Aggregate(Batch.OfMessages(0)).To("sink", (_, _) => System.Threading.Tasks.Task.CompletedTask).Build(), "Build fails");
            Expect.Contains(e.Message, "Batch.MaxMessages must be ≥ 1 (got 0)", "the message names the setting");
        }),
    });
}
