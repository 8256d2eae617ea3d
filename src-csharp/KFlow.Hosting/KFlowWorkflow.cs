// A checked, runnable workflow (what Build() returns): start it with options, get a RunningWorkflow.
using System;
using System.Collections.Generic;
using System.Collections.Immutable;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using KFlow.Kafka;
using Microsoft.Extensions.Logging;

namespace KFlow.Hosting;

/// <summary>A workflow ready to run: pass it to <c>AddKFlow().AddWorkflow(…)</c> or start it yourself
/// with <see cref="StartAsync"/>.</summary>
public sealed class KFlowWorkflow
{
    private readonly Func<RunContext, Task<Pipe<byte[], Sunk>>> _start;

    private readonly string _outline;

    private readonly FailurePolicy? _policy;

    private readonly ImmutableDictionary<string, FailurePolicy> _stagePolicies;

    internal KFlowWorkflow(
        string name,
        string topic,
        string groupId,
        string outline,
        Func<RunContext, Task<Pipe<byte[], Sunk>>> start,
        FailurePolicy? policy,
        ImmutableDictionary<string, FailurePolicy> stagePolicies)
    {
        _policy = policy;
        _stagePolicies = stagePolicies;
        _outline = outline;
        Name = name;
        Topic = topic;
        GroupId = groupId;
        _start = start;
    }

    /// <summary>The workflow's name (logs, client.id).</summary>
    public string Name { get; }

    /// <summary>The Kafka topic consumed.</summary>
    public string Topic { get; }

    /// <summary>The consumer group.</summary>
    public string GroupId { get; }

    /// <summary>The workflow's failure policy, or null for the default (see <see cref="WorkflowBuilder.Policy"/>).</summary>
    public FailurePolicy? Policy => _policy;

    /// <summary>The failure policies of single stages, by stage name.</summary>
    public IReadOnlyDictionary<string, FailurePolicy> StagePolicies => _stagePolicies;

    /// <summary>A readable outline of the pipeline, one stage per line.</summary>
    public string Describe() => _outline;

    /// <summary>Starts the workflow: creates its sink (a PostgreSQL sink checks its table now), joins
    /// the consumer group and runs the pipeline on every assigned partition.</summary>
    /// <param name="options">Kafka and PostgreSQL settings; validated here.</param>
    /// <param name="logger">Receives the runtime's log lines: assignments, revokes and pauses at
    /// Information, failures and restarts at Warning. Default: none.</param>
    /// <param name="cancellationToken">Cancels the start (the sink's creation).</param>
    /// <exception cref="ArgumentException">A setting is invalid; the message names it.</exception>
    public async Task<RunningWorkflow> StartAsync(
        KFlowOptions options,
        ILogger? logger = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var problems = KFlowOptionsValidator.Problems(options);
        if (problems.Count > 0)
            throw new ArgumentException($"Workflow '{Name}': " + string.Join(" ", problems), nameof(options));
        var stopping = new CancellationTokenSource();
        var ctx = new RunContext(options, stopping.Token);
        cancellationToken.ThrowIfCancellationRequested();
        var pipe = await _start(ctx).ConfigureAwait(false);
        var kafka = options.Kafka;
        // The runtime's lines are plain text; failures and restarts are raised to Warning so they
        // show under the usual "Information for the app, Warning for libraries" filters.
        Action<string>? log = logger is null
            ? null
            : line =>
            {
                var warning = line.Contains(" failed", StringComparison.Ordinal)
                              || line.Contains("restarting", StringComparison.Ordinal)
                              || line.Contains("halting", StringComparison.Ordinal);
                logger.Log(warning ? LogLevel.Warning : LogLevel.Information, "{Line}", line);
            };
        var handle = WorkflowCore.Run(
            Name,
            kafka.BootstrapServers!,
            GroupId,
            new[] { Topic },
            pipe,
            kafka.Properties,
            kafka.CommitInterval,
            kafka.MaxInFlightMessages,
            kafka.MaxOpenOffsetsPerPartition,
            kafka.DrainTimeout,
            kafka.HaltOnFailure,
            log,
            _policy?.ToCore()!,
            _stagePolicies.ToDictionary(kv => kv.Key, kv => kv.Value.ToCore(), StringComparer.Ordinal),
            kafka.MaxConcurrentCalls,
            kafka.MaxConcurrentWrites,
            kafka.MaxQueuedMessages);
        return new RunningWorkflow(Name, handle, ctx, stopping, kafka.DrainTimeout);
    }
}
