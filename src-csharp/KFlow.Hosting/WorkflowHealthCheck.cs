// A health check per workflow (registered by AddWorkflow as "kflow:<name>", tag "kflow"): unhealthy
// when not running or halted, degraded while it waits to restart after a failure.
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace KFlow.Hosting;

internal sealed class WorkflowHealthCheck(string name, KFlowRuntime runtime) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var running = runtime.Find(name);
        if (running is null)
            return Task.FromResult(HealthCheckResult.Unhealthy($"Workflow '{name}' has not started."));
        if (running.Completion.IsFaulted)
            return Task.FromResult(HealthCheckResult.Unhealthy(
                $"Workflow '{name}' halted: {running.Completion.Exception?.GetBaseException().Message}"));
        if (running.Completion.IsCompleted)
            return Task.FromResult(HealthCheckResult.Unhealthy($"Workflow '{name}' has stopped."));
        var p = running.Progress;
        var data = new Dictionary<string, object>
        {
            ["consumed"] = p.Consumed,
            ["inFlight"] = p.InFlight,
            ["written"] = p.Written,
            ["failures"] = p.Failures,
            ["restarts"] = p.Restarts,
            ["assignedPartitions"] = p.AssignedPartitions,
            ["pausedPartitions"] = p.PausedPartitions,
            ["lag"] = p.Partitions.Where(x => x.Lag > 0).Sum(x => x.Lag),
            ["deadLettered"] = p.DeadLettered,
        };
        return Task.FromResult(p.Failures > p.Restarts
            ? HealthCheckResult.Degraded($"Workflow '{name}' failed and waits to restart from the committed offsets.", data: data)
            : HealthCheckResult.Healthy($"Workflow '{name}' is running.", data));
    }
}
