// Runs every test list of the facade's tests under Expecto (its C# runner), with Expecto's command
// line (--filter-test-list, --nunit-summary, ...).
using System;
using Expecto.CSharp;

namespace KFlowHostingTests;

internal static class Program
{
    private static int Main(string[] args) =>
        Runner.RunTestsWithCLIArgs(Array.Empty<Expecto.Tests.CLIArguments>(), args, Runner.TestList("KFlow.Hosting", new[]
        {
            PublicSurfaceTests.Tests,
            BatchTests.Tests,
            FlowTests.Tests,
            FailurePolicyTests.Tests,
            PostgresColumnsTests.Tests,
            PostgresFlowExtensionsTests.Tests,
            ServiceCollectionExtensionsTests.Tests,
            CSharpGuideTests.Tests,
            WorkflowTests.Tests,
            KFlowMeterTests.Tests,
            WorkflowHealthCheckTests.Tests,
            DemoTests.Tests,
        }));
}
