// One hosted service per workflow: starts it with the host, stops it gracefully with the host, and
// stops the host when the workflow halts.
using System;
using System.Threading;
using System.Threading.Tasks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace KFlow.Hosting;

internal sealed class WorkflowHostedService(
    KFlowWorkflow workflow,
    IOptions<KFlowOptions> options,
    KFlowRuntime runtime,
    IHostApplicationLifetime lifetime,
    ILoggerFactory loggers) : IHostedService
{
    private readonly ILogger _logger = loggers.CreateLogger("KFlow.Workflow." + workflow.Name);
    private RunningWorkflow? _running;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        _logger.LogInformation("Starting workflow '{Name}' on topic '{Topic}', group '{Group}'.",
            workflow.Name, workflow.Topic, workflow.GroupId);
        var running = await workflow.StartAsync(options.Value, _logger, cancellationToken).ConfigureAwait(false);
        _running = running;
        runtime.Add(running);
        _ = running.Completion.ContinueWith(t =>
        {
            if (t.IsFaulted)
            {
                _logger.LogCritical(t.Exception?.GetBaseException(), "Workflow '{Name}' halted; stopping the host.",
                    workflow.Name);
                lifetime.StopApplication();
            }
        }, TaskScheduler.Default);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_running is null) return;
        _logger.LogInformation("Stopping workflow '{Name}' (flush, drain, commit).", workflow.Name);
        await _running.StopAsync().WaitAsync(cancellationToken).ConfigureAwait(false);
        _logger.LogInformation("Workflow '{Name}' stopped.", workflow.Name);
    }
}
