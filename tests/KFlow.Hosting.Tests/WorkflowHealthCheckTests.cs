// Tests of src-csharp/KFlow.Hosting/WorkflowHealthCheck.cs: the health check AddWorkflow registers
// follows the workflow through start and stop.
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;

namespace KFlowHostingTests;

internal static class WorkflowHealthCheckTests
{
    public static readonly Test Tests = Runner.TestSequenced(Runner.TestList("WorkflowHealthCheck", new[]
    {
        Runner.TestCase("a workflow's health is unhealthy before the start, healthy while running, unhealthy after the stop", async () =>
        {
            const string topic = "facade-health";
            WorkflowTests.Produce(topic, 10, 2);
            var options = WorkflowTests.Options();
            var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
            builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["KFlow:Kafka:BootstrapServers"] = options.Kafka.BootstrapServers,
            }.Concat(options.Kafka.Properties.Select(kv =>
                new KeyValuePair<string, string?>($"KFlow:Kafka:Properties:{kv.Key}", kv.Value))));
            builder.Services.AddKFlow().AddWorkflow(Workflow.FromKafka(topic, "facade-health").To("nothing", (_, _) => Task.CompletedTask));
            using var host = builder.Build();
            var health = host.Services.GetRequiredService<HealthCheckService>();

            async Task<HealthReportEntry> Check() => (await health.CheckHealthAsync()).Entries["kflow:facade-health"];

            Expect.AreEqual((await Check()).Status, HealthStatus.Unhealthy, "before the start");
            await host.StartAsync();
            var entry = await Check();
            Expect.AreEqual(entry.Status, HealthStatus.Healthy, "while running: " + entry.Description);
            foreach (var key in new[] { "consumed", "inFlight", "restarts", "pausedPartitions", "lag", "deadLettered" })
                Expect.IsTrue(entry.Data.ContainsKey(key), $"the data holds {key}");
            await host.StopAsync();
            Expect.AreEqual((await Check()).Status, HealthStatus.Unhealthy, "after the stop");
        }),
    }));
}
