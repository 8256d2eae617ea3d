// What AddKFlow returns: adds workflows, each run by its own hosted service.
using System;
using System.Collections.Generic;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace KFlow.Hosting;

/// <summary>Adds workflows to the host (returned by <c>AddKFlow</c>).</summary>
public sealed class KFlowBuilder
{
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);

    internal KFlowBuilder(IServiceCollection services) => Services = services;

    /// <summary>The service collection.</summary>
    public IServiceCollection Services { get; }

    /// <summary>Runs <paramref name="workflow"/> as a hosted service: started with the host, stopped
    /// gracefully (flush, drain, commit) when the host stops. Also adds its health check
    /// "kflow:&lt;name&gt;" (tag "kflow"): unhealthy before the start, after a stop or a halt; degraded
    /// while it waits to restart after a failure; healthy otherwise.</summary>
    /// <exception cref="ArgumentException">A workflow of the same name was added already.</exception>
    public KFlowBuilder AddWorkflow(KFlowWorkflow workflow)
    {
        ArgumentNullException.ThrowIfNull(workflow);
        if (!_names.Add(workflow.Name))
            throw new ArgumentException(
                $"AddWorkflow: a workflow named '{workflow.Name}' was added already; give each a distinct name (WithName).",
                nameof(workflow));
        Services.AddSingleton<IHostedService>(sp => new WorkflowHostedService(
            workflow,
            sp.GetRequiredService<IOptions<KFlowOptions>>(),
            sp.GetRequiredService<KFlowRuntime>(),
            sp.GetRequiredService<IHostApplicationLifetime>(),
            sp.GetRequiredService<ILoggerFactory>()));
        var name = workflow.Name;
        Services.AddHealthChecks().Add(new HealthCheckRegistration(
            "kflow:" + name,
            sp => new WorkflowHealthCheck(name, sp.GetRequiredService<KFlowRuntime>()),
            failureStatus: null,
            tags: new[] { "kflow" }));
        return this;
    }

    /// <summary>Builds <paramref name="build"/>'s pipeline and adds it (see <see cref="AddWorkflow(KFlowWorkflow)"/>).</summary>
    public KFlowBuilder AddWorkflow(WorkflowBuilder build)
    {
        ArgumentNullException.ThrowIfNull(build);
        return AddWorkflow(build.Build());
    }
}
