// Start-up validation of KFlowOptions (ValidateOnStart): each message says what to set and where.
using System;
using System.Collections.Generic;
using Microsoft.Extensions.Options;

namespace KFlow.Hosting;

internal sealed class KFlowOptionsValidator : IValidateOptions<KFlowOptions>
{
    public ValidateOptionsResult Validate(string? name, KFlowOptions options)
    {
        var problems = Problems(options);
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }

    internal static List<string> Problems(KFlowOptions options)
    {
        var problems = new List<string>();
        var kafka = options.Kafka ?? new KafkaSettings();
        if (string.IsNullOrWhiteSpace(kafka.BootstrapServers))
            problems.Add("KFlow:Kafka:BootstrapServers is not set; set it in appsettings.json, the environment " +
                         "(KFlow__Kafka__BootstrapServers=host:9092) or the command line (--KFlow:Kafka:BootstrapServers=host:9092).");
        if (kafka.CommitInterval <= TimeSpan.Zero)
            problems.Add($"KFlow:Kafka:CommitInterval must be > 0 (got {kafka.CommitInterval}).");
        if (kafka.DrainTimeout <= TimeSpan.Zero)
            problems.Add($"KFlow:Kafka:DrainTimeout must be > 0 (got {kafka.DrainTimeout}).");
        if (kafka.MaxInFlightMessages < 1)
            problems.Add($"KFlow:Kafka:MaxInFlightMessages must be ≥ 1 (got {kafka.MaxInFlightMessages}).");
        if (kafka.MaxOpenOffsetsPerPartition < 1)
            problems.Add($"KFlow:Kafka:MaxOpenOffsetsPerPartition must be ≥ 1 (got {kafka.MaxOpenOffsetsPerPartition}).");
        if (kafka.MaxQueuedMessages < 1)
            problems.Add($"KFlow:Kafka:MaxQueuedMessages must be ≥ 1 (got {kafka.MaxQueuedMessages}).");
        if (kafka.MaxConcurrentCalls < 1)
            problems.Add($"KFlow:Kafka:MaxConcurrentCalls must be ≥ 1 (got {kafka.MaxConcurrentCalls}).");
        if (kafka.MaxConcurrentWrites < 1)
            problems.Add($"KFlow:Kafka:MaxConcurrentWrites must be ≥ 1 (got {kafka.MaxConcurrentWrites}).");
        return problems;
    }
}
