// AddKFlow: KFlow's options (bound from configuration, validated at start) and the runtime registry.
using System;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace KFlow.Hosting;

/// <summary>Registers KFlow in a service collection.</summary>
public static class ServiceCollectionExtensions
{
    /// <summary>Adds KFlow with its settings bound from the app configuration's "KFlow" section
    /// (appsettings.json, environment variables such as KFlow__Kafka__BootstrapServers, command line),
    /// validated when the host starts. Add workflows on the returned builder.</summary>
    public static KFlowBuilder AddKFlow(this IServiceCollection services) => services.AddKFlow(_ => { });

    /// <summary>As <see cref="AddKFlow(IServiceCollection)"/>, then <paramref name="configure"/> changes the settings.</summary>
    public static KFlowBuilder AddKFlow(this IServiceCollection services, Action<KFlowOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        var options = Register(services).BindConfiguration(KFlowOptions.SectionName);
        options.Configure(configure);
        return new KFlowBuilder(services);
    }

    /// <summary>Adds KFlow with its settings bound from <paramref name="section"/> (e.g.
    /// <c>configuration.GetSection("KFlow")</c>), validated when the host starts.</summary>
    public static KFlowBuilder AddKFlow(this IServiceCollection services, IConfiguration section)
    {
        ArgumentNullException.ThrowIfNull(section);
        Register(services).Bind(section);
        return new KFlowBuilder(services);
    }

    private static OptionsBuilder<KFlowOptions> Register(IServiceCollection services)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.TryAddSingleton<KFlowRuntime>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<KFlowOptions>, KFlowOptionsValidator>());
        return services.AddOptions<KFlowOptions>().ValidateOnStart();
    }
}
