// Assertions of the facade's tests: a failure throws Expecto's AssertException with the message.
using System;
using System.Collections.Generic;
using System.Linq;

namespace KFlowHostingTests;

internal static class Expect
{
    public static void IsTrue(bool condition, string message)
    {
        if (!condition) throw new Expecto.AssertException(message);
    }

    public static void AreEqual<T>(T actual, T expected, string message)
    {
        if (!EqualityComparer<T>.Default.Equals(actual, expected))
            throw new Expecto.AssertException($"{message}. Expected {expected}, got {actual}.");
    }

    public static void SequenceEqual<T>(IEnumerable<T> actual, IEnumerable<T> expected, string message)
    {
        var a = actual.ToList();
        var e = expected.ToList();
        if (!a.SequenceEqual(e))
            throw new Expecto.AssertException($"{message}. Expected [{string.Join(", ", e)}], got [{string.Join(", ", a)}].");
    }

    /// <summary>Runs <paramref name="action"/>, expects a <typeparamref name="TException"/> and returns it.</summary>
    public static TException Throws<TException>(Action action, string message) where TException : Exception
    {
        try
        {
            action();
        }
        catch (TException e)
        {
            return e;
        }
        catch (Exception e)
        {
            throw new Expecto.AssertException($"{message}. Expected {typeof(TException).Name}, got {e.GetType().Name}: {e.Message}");
        }

        throw new Expecto.AssertException($"{message}. Expected {typeof(TException).Name}, nothing was thrown.");
    }

    public static void Contains(string text, string part, string message) =>
        IsTrue(text.Contains(part, StringComparison.Ordinal), $"{message}. '{part}' not found in: {text}");
}
