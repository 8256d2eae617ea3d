// A pipeline that ends in a sink, with the workflow's own settings; Build() checks everything and
// names the setting to fix.
using System;
using System.Collections.Immutable;
using System.Linq;
using System.Threading.Tasks;
using KFlow.Kafka;

namespace KFlow.Hosting;

/// <summary>A complete pipeline (source, stages, sink) and its workflow settings. Immutable: change a
/// setting with <c>with { … }</c> or a <c>With…</c> method; <see cref="Build"/> checks them.</summary>
public sealed record WorkflowBuilder
{
    internal WorkflowBuilder(
        string topic,
        string groupId,
        ImmutableList<string> problems,
        string outline,
        Func<RunContext, Task<Pipe<byte[], Sunk>>> start)
    {
        Outline = outline;
        Topic = topic;
        GroupId = groupId;
        Problems = problems;
        Start = start;
    }

    /// <summary>The Kafka topic consumed.</summary>
    public string Topic { get; init; }

    /// <summary>The consumer group (group.id).</summary>
    public string GroupId { get; init; }

    /// <summary>The workflow's name, in logs and as the consumer's client.id. Default: the group id.</summary>
    public string? Name { get; init; }

    internal ImmutableList<string> Problems { get; init; }

    internal Func<RunContext, Task<Pipe<byte[], Sunk>>> Start { get; init; }

    internal string Outline { get; init; }

    /// <summary>This workflow with another name.</summary>
    public WorkflowBuilder WithName(string name) => this with { Name = name };

    /// <summary>Checks the pipeline and its settings and returns the runnable workflow.</summary>
    /// <exception cref="ArgumentException">A setting is missing or invalid; the message names it.</exception>
    public KFlowWorkflow Build()
    {
        var problems = Problems;
        if (string.IsNullOrWhiteSpace(Topic))
            problems = problems.Insert(0, "Workflow.FromKafka: topic must not be empty; name the Kafka topic to consume.");
        if (string.IsNullOrWhiteSpace(GroupId))
            problems = problems.Insert(0, "Workflow.FromKafka: groupId must not be empty; set the consumer group (group.id).");
        if (Name is not null && string.IsNullOrWhiteSpace(Name))
            problems = problems.Add("WithName: the name must not be blank; leave it unset to use the group id.");
        var name = Name ?? GroupId;
        if (!problems.IsEmpty)
            throw new ArgumentException(
                $"Workflow '{name}' is not valid: " + string.Join(" ", problems.Distinct()));
        return new KFlowWorkflow(name, Topic, GroupId, Outline, Start);
    }
}
