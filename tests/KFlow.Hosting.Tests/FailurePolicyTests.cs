// Tests of src-csharp/KFlow.Hosting/FailurePolicy.cs and WorkflowBuilder.OnFailure: policies read as
// sentences, reach the built workflow, and invalid or duplicate ones are reported by Build().
// (FailurePolicy on the embedded cluster: WorkflowTests.)
using System;
using System.Threading.Tasks;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;

namespace KFlowHostingTests;

internal static class FailurePolicyTests
{
    public static readonly Test Tests = Runner.TestList("FailurePolicy", new[]
    {
        Runner.TestCase("Build reports a failure policy set twice and invalid policies", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("orders", "billing").To("sink", (_, _) => Task.CompletedTask)
                .OnFailure(FailurePolicy.Halt)
                .OnFailure(FailurePolicy.RestartAndReplay())
                .OnFailure("map", FailurePolicy.DeadLetter(" "))
                .OnFailure("sink", FailurePolicy.RetryInPlace(-1, FailurePolicy.Halt))
                .OnFailure("sink", FailurePolicy.Halt)
                .Build(), "Build fails");
            foreach (var part in new[] { "policy is set twice", "DeadLetter: the topic must not be empty",
                         "retries must be ≥ 0 (got -1)", "policy of stage 'sink' is set twice" })
                Expect.Contains(e.Message, part, "each problem is listed");
        }),
        Runner.TestCase("the failure policies read as sentences and reach the built workflow", () =>
        {
            var policy = FailurePolicy.RetryInPlace(3, FailurePolicy.DeadLetter("orders-dlq"));
            Expect.AreEqual(policy.ToString(), "retry 3 times, then dead-letter to 'orders-dlq'", "ToString");
            var built = Workflow.FromKafka("orders", "billing").To("sink", (_, _) => Task.CompletedTask)
                .OnFailure(FailurePolicy.Halt).OnFailure("sink", policy).Build();
            Expect.AreEqual(built.Policy, FailurePolicy.Halt, "the workflow's policy");
            Expect.AreEqual(built.StagePolicies["sink"], policy, "the stage's policy");
        }),
        Runner.TestCase("the policies' delays are checked", () =>
        {
            var e = Expect.Throws<ArgumentException>(() => Workflow.FromKafka("orders", "billing").To("sink", (_, _) => Task.CompletedTask)
                .OnFailure(FailurePolicy.RestartAndReplay(TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(1)))
                .OnFailure("sink", FailurePolicy.RetryInPlace(2, FailurePolicy.Halt, TimeSpan.Zero))
                .OnFailure("map", FailurePolicy.RestartAndReplay(maxDelay: TimeSpan.FromMilliseconds(500)))
                .Build(), "Build fails");
            Expect.Contains(e.Message, "RestartAndReplay: maxDelay (00:00:01) must be ≥ firstDelay (00:00:05)", "max below first");
            Expect.Contains(e.Message, "RetryInPlace: firstDelay must be > 0 (got 00:00:00)", "zero first delay");
            Expect.Contains(e.Message, "RestartAndReplay: maxDelay (00:00:00.5000000) must be ≥ firstDelay (00:00:01)",
                "max below the default first delay");
        }),
    });
}
