// Tests of src-csharp/KFlow.Hosting/ServiceCollectionExtensions.cs, KFlowOptions.cs and
// KFlowBuilder.cs: settings bound from configuration, validated at start, one hosted service per workflow.
using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace KFlowHostingTests;

internal static class ServiceCollectionExtensionsTests
{
    private static IConfiguration Config(params (string Key, string Value)[] values) =>
        new ConfigurationBuilder()
            .AddInMemoryCollection(values.Select(v => new KeyValuePair<string, string?>(v.Key, v.Value)))
            .Build();

    private static KFlowWorkflow Sample(string group) =>
        Workflow.FromKafka("orders", group).To("sink", (_, _) => Task.CompletedTask).Build();

    public static readonly Test Tests = Runner.TestList("ServiceCollectionExtensions", new[]
    {
        Runner.TestCase("AddKFlow binds the KFlow section of the app configuration", () =>
        {
            var services = new ServiceCollection();
            services.AddSingleton(Config(
                ("KFlow:Kafka:BootstrapServers", "kafka1:9092"),
                ("KFlow:Kafka:MaxInFlightMessages", "1000"),
                ("KFlow:Kafka:MaxConcurrentCalls", "16"),
                ("KFlow:Kafka:CommitInterval", "00:00:02"),
                ("KFlow:Kafka:Properties:session.timeout.ms", "3000"),
                ("KFlow:Postgres:ConnectionString", "Host=db")));
            services.AddKFlow();
            var options = services.BuildServiceProvider().GetRequiredService<IOptions<KFlowOptions>>().Value;
            Expect.AreEqual(options.Kafka.BootstrapServers, "kafka1:9092", "bootstrap servers");
            Expect.AreEqual(options.Kafka.MaxInFlightMessages, 1000, "in-flight limit");
            Expect.AreEqual(options.Kafka.MaxConcurrentCalls, 16, "async calls at once");
            Expect.AreEqual(options.Kafka.MaxConcurrentWrites, int.MaxValue, "sink writes at once: no cap by default");
            Expect.AreEqual(options.Kafka.CommitInterval, TimeSpan.FromSeconds(2), "commit interval");
            Expect.AreEqual(options.Kafka.Properties["session.timeout.ms"], "3000", "a librdkafka property");
            Expect.AreEqual(options.Postgres.ConnectionString, "Host=db", "connection string");
            Expect.AreEqual(options.Kafka.DrainTimeout, TimeSpan.FromSeconds(10), "an unset setting keeps its default");
        }),
        Runner.TestCase("AddKFlow with a section and a configure action", () =>
        {
            var services = new ServiceCollection();
            services.AddSingleton(Config(("KFlow:Kafka:BootstrapServers", "from-config:9092")));
            services.AddKFlow(o => o.Kafka.MaxInFlightMessages = 7);
            var options = services.BuildServiceProvider().GetRequiredService<IOptions<KFlowOptions>>().Value;
            Expect.AreEqual(options.Kafka.BootstrapServers, "from-config:9092", "configuration is bound first");
            Expect.AreEqual(options.Kafka.MaxInFlightMessages, 7, "then the action applies");

            var other = new ServiceCollection();
            other.AddKFlow(Config(("Kafka:BootstrapServers", "section:9092")));
            var fromSection = other.BuildServiceProvider().GetRequiredService<IOptions<KFlowOptions>>().Value;
            Expect.AreEqual(fromSection.Kafka.BootstrapServers, "section:9092", "an explicit section binds");
        }),
        Runner.TestCase("the host refuses to start without bootstrap servers and says what to set", () =>
        {
            var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
            builder.Services.AddKFlow(o =>
            {
                o.Kafka.MaxInFlightMessages = 0;
                o.Kafka.MaxConcurrentCalls = 0;
                o.Kafka.MaxConcurrentWrites = -1;
                o.Kafka.MaxQueuedMessages = 0;
            });
            using var host = builder.Build();
            var e = Expect.Throws<OptionsValidationException>(() => host.StartAsync().GetAwaiter().GetResult(), "start fails");
            Expect.Contains(e.Message, "KFlow__Kafka__BootstrapServers", "the message names the environment variable");
            Expect.Contains(e.Message, "KFlow:Kafka:MaxInFlightMessages must be ≥ 1 (got 0)", "every problem is named");
            Expect.Contains(e.Message, "KFlow:Kafka:MaxConcurrentCalls must be ≥ 1 (got 0)", "the call cap is named");
            Expect.Contains(e.Message, "KFlow:Kafka:MaxConcurrentWrites must be ≥ 1 (got -1)", "the write cap is named");
            Expect.Contains(e.Message, "KFlow:Kafka:MaxQueuedMessages must be ≥ 1 (got 0)", "the queue limit is named");
        }),
        Runner.TestCase("each workflow is one hosted service with its health check", () =>
        {
            var services = new ServiceCollection();
            services.AddKFlow().AddWorkflow(Sample("a")).AddWorkflow(Sample("b"));
            // (AddHealthChecks adds its publisher, a hosted service of its own type.)
            Expect.AreEqual(services.Count(d => d.ServiceType == typeof(IHostedService) && d.ImplementationFactory is not null), 2,
                "two workflow hosted services");
            var checks = services.BuildServiceProvider()
                .GetRequiredService<IOptions<Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckServiceOptions>>().Value.Registrations;
            Expect.SequenceEqual(checks.Select(r => r.Name).OrderBy(n => n), new[] { "kflow:a", "kflow:b" }, "one health check each");
        }),
        Runner.TestCase("a second workflow of the same name is refused", () =>
        {
            var e = Expect.Throws<ArgumentException>(
                () => new ServiceCollection().AddKFlow().AddWorkflow(Sample("a")).AddWorkflow(Sample("a")), "AddWorkflow fails");
            Expect.Contains(e.Message, "'a' was added already", "the message names the workflow");
        }),
    });
}
